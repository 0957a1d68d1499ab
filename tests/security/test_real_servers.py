"""Security against real servers: logs, cross-process limits, origins, start-up warning."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

import pytest
import websockets
from websockets.asyncio.client import connect

from rooms import tokens
from tests.security.conftest import Server

SECRET = "TOP-SECRET-PAYLOAD-b81c"


async def _closed_with(url: str, **kwargs: Any) -> tuple[int, str]:
    """Connect, expect the server to refuse: (code of the final close frame, close code)."""
    async with connect(url, **kwargs) as ws:
        frame = json.loads(await ws.recv())
        assert frame["type"] == "close", frame
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == frame["code"]
        return frame["code"], frame["reason"]


async def _welcome(ws: Any) -> dict[str, Any]:
    frame = json.loads(await ws.recv())
    assert frame["type"] == "welcome", frame
    return frame


async def _exercise_with_secrets(server: Server, room: str) -> str:
    token, _ = tokens.issue("alice", room, "write")
    async with connect(f"{server.ws}/ws/{room}?token={token}") as alice, connect(
        f"{server.ws}/ws/{room}?userId=bob"
    ) as bob:
        await _welcome(alice)
        await _welcome(bob)
        await alice.send(json.dumps({"type": "draw", "id": "s1", "payload": {"note": SECRET}}))
        await alice.send('{"type":"draw","payload":{"note":"' + SECRET + '","x":1e300}}')
        await alice.send("not json " + SECRET)
        await alice.send(json.dumps({"type": "presence", "payload": {"status": SECRET}}))
        kinds = set()
        while "ack" not in kinds or "error" not in kinds:
            kinds.add(json.loads(await alice.recv())["type"])
        assert json.loads(await bob.recv())["type"] in ("draw", "presence", "user_joined")
    # A refused token too: refusals are logged with their reason, never the token.
    expired, _ = tokens.issue("alice", room, "write", now=1_000_000)
    assert (await _closed_with(f"{server.ws}/ws/{room}?token={expired}"))[0] == 4401
    return token + "\n" + expired


@pytest.mark.parametrize("server_kind", ["daphne", "uvicorn"])
async def test_no_payload_and_no_token_ever_reaches_the_server_log(
    start_server: Callable[..., Server], server_kind: str
) -> None:
    server = start_server(server_kind, DORM_LOG_LEVEL="DEBUG")
    secrets_sent = await _exercise_with_secrets(server, "logs")
    text = server.stop()
    assert "join room=logs user=alice" in text  # metadata is logged
    assert "code=4401" in text
    assert SECRET not in text
    for token in secrets_sent.splitlines():
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature
    if server_kind == "uvicorn":
        assert "token=[redacted]" in text  # uvicorn's handshake line, filtered


async def test_per_address_limit_holds_across_two_processes(
    start_server: Callable[..., Server], redis_url: str, redis_prefix: str
) -> None:
    limits = {
        "REDIS_URL": redis_url,
        "DORM_LIMITS_KEY_PREFIX": redis_prefix,
        "DORM_CONNECT_RATE_PER_SECOND": "0.01",
        "DORM_CONNECT_BURST": "3",
    }
    one, two = start_server(**limits), start_server(**limits)
    async with connect(f"{one.ws}/ws/spread?userId=a") as a, connect(f"{two.ws}/ws/spread?userId=b") as b, connect(
        f"{one.ws}/ws/spread?userId=c"
    ) as c:
        for ws in (a, b, c):
            await _welcome(ws)
        # Server two has seen one connection from this address; the shared bucket has seen three.
        code, reason = await _closed_with(f"{two.ws}/ws/spread?userId=d")
        assert code == 4429 and "too many connection attempts" in reason


async def test_room_size_holds_across_two_processes(
    start_server: Callable[..., Server], redis_url: str, redis_prefix: str
) -> None:
    shared = {"REDIS_URL": redis_url, "DORM_LIMITS_KEY_PREFIX": redis_prefix}
    one, two = start_server(rooms={"capped": 2}, **shared), start_server(rooms={"capped": 2}, **shared)
    async with connect(f"{one.ws}/ws/capped?userId=a") as a, connect(f"{two.ws}/ws/capped?userId=b") as b:
        await _welcome(a)
        await _welcome(b)
        # Each process holds one connection; the room holds two, its maximum.
        assert await _closed_with(f"{one.ws}/ws/capped?userId=c") == (4409, "room is full")
        assert await _closed_with(f"{two.ws}/ws/capped?userId=c") == (4409, "room is full")
    # Both left: their places are given back, on either process.
    for _ in range(50):
        try:
            async with connect(f"{two.ws}/ws/capped?userId=c") as c, connect(f"{one.ws}/ws/capped?userId=d") as d:
                await _welcome(c)
                await _welcome(d)
                break
        except AssertionError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("places were not given back")


async def test_browser_origins_are_checked_and_production_warns_at_start(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="x" * 60 + "distinct-chars-0123456789",
        DORM_TOKEN_SECRET="s" * 40,
        DORM_ALLOW_ANONYMOUS="true",
        DJANGO_ALLOWED_ORIGINS="https://app.example.com",
    )
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(f"{server.ws}/ws/o?userId=u", origin="https://evil.example.com"):
            pass
    assert refused.value.response.status_code == 403
    async with connect(f"{server.ws}/ws/o?userId=u", origin="https://app.example.com") as ws:
        await _welcome(ws)
    async with connect(f"{server.ws}/ws/o?userId=u") as ws:  # apps and bots send no Origin
        await _welcome(ws)
    text = server.stop()
    assert "insecure setting dorm.W001" in text


async def test_token_expiry_mid_session_then_the_refresh_flow_loses_nothing(
    start_server: Callable[..., Server],
) -> None:
    """docs/security.md's refresh flow against a real daphne: 4401 at expiry,
    then a fresh token and `since` give exactly the missed events."""
    server = start_server(DORM_TOKEN_LEEWAY_SECONDS="0")
    token, claims = tokens.issue("alice", "refresh", "write", ttl_seconds=2)
    async with connect(f"{server.ws}/ws/refresh?userId=bob") as bob:
        await _welcome(bob)
        async with connect(f"{server.ws}/ws/refresh?token={token}") as alice:
            await _welcome(alice)
            await alice.send(json.dumps({"type": "draw", "id": "a1", "payload": {"x": 1}}))
            last_seq = 0
            while True:
                frame = json.loads(await alice.recv())
                if frame["type"] == "ack":
                    last_seq = frame["seq"]
                if frame["type"] == "close":
                    break
            assert frame == {"type": "close", "code": 4401, "reason": "token expired"}
            assert abs(time.time() - claims.exp) < 0.5
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await alice.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        # While alice fetches a new token, the room moves on.
        await bob.send(json.dumps({"type": "draw", "id": "b1", "payload": {"x": 2}}))
        while json.loads(await bob.recv())["type"] != "ack":
            pass
    fresh, _ = tokens.issue("alice", "refresh", "write")
    async with connect(f"{server.ws}/ws/refresh?token={fresh}&since={last_seq}") as alice:
        welcome = await _welcome(alice)
        assert welcome["resumed"] is True and welcome["seq"] == 2
        missed = json.loads(await alice.recv())
        assert (missed["type"], missed["seq"], missed["userId"]) == ("draw", 2, "bob")
