"""The Python client (clients/python/dorm_client) against a real daphne server."""

from __future__ import annotations

import asyncio
import time
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from dorm_client import CLOSED, OPEN, TERMINAL_CODES, DormClient, DormError, backoff_delay

from tests.e2e.client import room_name
from tests.e2e.server import DormServer, free_port

pytestmark = pytest.mark.timeout(60)


async def until(predicate: Callable[[], Any], what: str, timeout: float = 8.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.01)
    raise AssertionError(what)  # unreachable: the timeout raises


def collect(client: DormClient, type_: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    client.on(type_, got.append)
    return got


@pytest.fixture
async def make(dorm_server: DormServer) -> AsyncIterator[Callable[..., DormClient]]:
    clients: list[DormClient] = []

    def _make(room: str, url: str | None = None, **options: Any) -> DormClient:
        options.setdefault("backoff_base", 0.1)
        options.setdefault("heartbeat", 60)
        client = DormClient(url or f"ws://127.0.0.1:{dorm_server.port}", room, **options)
        clients.append(client)
        return client

    yield _make
    for client in clients:
        await client.close()


def test_backoff_delay_is_exponential_jittered_and_capped() -> None:
    assert backoff_delay(0, 0.5, random=lambda: 0) == 0.25
    assert backoff_delay(3, 0.5, random=lambda: 0) == 2.0
    assert backoff_delay(3, 0.5, random=lambda: 0.999999) == pytest.approx(4.0, abs=1e-5)
    assert all(backoff_delay(n, random=lambda: 0.999999) <= 30.0 for n in range(80))
    assert backoff_delay(60, random=lambda: 0) == 15.0
    assert len({backoff_delay(4) for _ in range(20)}) > 1


async def test_reconnects_with_growing_capped_backoff_while_unreachable(make: Callable[..., DormClient]) -> None:
    client = make(room_name("py"), url=f"ws://127.0.0.1:{free_port()}", user_id="u1", backoff_base=0.04, backoff_max=0.4)
    states = collect(client, "state")
    client.connect()
    await until(lambda: sum(s["state"] == "reconnecting" for s in states) >= 6, "six attempts")
    delays = [s["delay"] for s in states if s["state"] == "reconnecting"]
    assert 0.02 <= delays[0] <= 0.04
    assert delays[3] >= 0.16
    assert all(d <= 0.4 for d in delays)


async def test_offline_queue_is_flushed_once_in_order(make: Callable[..., DormClient], dorm_server: DormServer) -> None:
    room = room_name("py")
    observer = make(room, user_id="observer")
    draws = collect(observer, "draw")
    await observer.connect().wait_open()
    writer = make(room, user_id="writer")
    handles = [writer.send("draw", {"i": i}) for i in range(3)]
    assert len(writer.pending) == 3
    writer.connect()
    acks = [await h for h in handles]
    assert [a["payload"]["i"] for a in acks] == [0, 1, 2]
    assert [a["seq"] for a in acks] == [1, 2, 3]
    await until(lambda: len(draws) >= 3, "observer saw three draws")
    await asyncio.sleep(0.15)
    assert [d["payload"]["i"] for d in draws] == [0, 1, 2]
    stored = dorm_server.events(room)
    assert [(e[0], e[2], e[3]) for e in stored] == [(a["seq"], "writer", a["id"]) for a in acks]


async def test_a_message_cut_before_its_ack_is_retried_with_its_id_and_applied_once(
    make: Callable[..., DormClient], dorm_server: DormServer
) -> None:
    room = room_name("py")
    observer = make(room, user_id="observer")
    draws = collect(observer, "draw")
    await observer.connect().wait_open()
    writer = make(room, user_id="writer", backoff_base=0.05)
    await writer.connect().wait_open()
    handles = []
    for i in range(6):
        handles.append(writer.send("draw", {"i": i}))
        if i % 2 == 0:
            await asyncio.sleep(0)  # let the writer task put the frame on the wire
            writer.drop_connection()  # ...and cut it before the ack comes back
    acks = [await h for h in handles]
    assert [a["id"] for a in acks] == [h.id for h in handles]
    await until(lambda: len(draws) >= 6, "six draws at the observer")
    await asyncio.sleep(0.3)
    assert [d["payload"]["i"] for d in draws] == list(range(6)), "each message exactly once, in order"
    stored = dorm_server.events(room)
    assert [json.loads(e[4])["i"] for e in stored] == list(range(6))
    assert len({e[3] for e in stored}) == 6


async def test_resume_gets_exactly_the_missed_events(make: Callable[..., DormClient]) -> None:
    room = room_name("py")
    a = make(room, user_id="a", backoff_base=0.6)
    seen = collect(a, "draw")
    welcomes = collect(a, "welcome")
    resets = collect(a, "reset")
    b = make(room, user_id="b")
    await a.connect().wait_open()
    await b.connect().wait_open()
    for i in range(3):
        await b.send("draw", {"i": i})
    await until(lambda: len(seen) == 3, "three live draws")
    a.drop_connection()
    for i in range(3, 8):
        await b.send("draw", {"i": i})
    await until(lambda: len(seen) >= 8 and a.state == OPEN, "a resumed")
    await asyncio.sleep(0.2)
    assert [d["seq"] for d in seen] == list(range(1, 9))
    assert [w["resumed"] for w in welcomes] == [False, True]
    assert len(resets) == 1
    assert a.last_seq == 8

    late = make(room, user_id="late", since=5)
    late_seen = collect(late, "draw")
    await late.connect().wait_open()
    await until(lambda: len(late_seen) >= 3, "replay after since=5")
    assert [d["seq"] for d in late_seen] == [6, 7, 8]


async def test_4401_refreshes_the_token_then_reconnects(make: Callable[..., DormClient]) -> None:
    calls: list[dict[str, Any]] = []

    async def refresh(info: dict[str, Any]) -> dict[str, str]:
        calls.append(info)
        # Token auth is off on this development server: the refreshed
        # credentials are an anonymous identity.
        return {"userId": "refreshed"}

    client = make(room_name("py"), token="expired", refresh_token=refresh)
    states = collect(client, "state")
    await client.connect().wait_open()
    assert [c["code"] for c in calls] == [4401]
    assert "token=expired" in states[0]["url"]
    assert client.user_id == "refreshed"
    assert (await client.send("draw", {"ok": 1}))["seq"] == 1


async def test_4401_without_new_credentials_stops_and_fails_the_queue(make: Callable[..., DormClient]) -> None:
    client = make(room_name("py"), token="bad", refresh_token=lambda info: None)
    client.connect()
    queued = client.send("draw", {"x": 1})
    with pytest.raises(DormError) as err:
        await asyncio.wait_for(queued.future, 5)
    assert err.value.reason == "closed" and err.value.code == 4401
    assert client.state == CLOSED


async def test_terminal_codes_stop_reconnecting(make: Callable[..., DormClient]) -> None:
    assert {4400, 4403, 4404} <= TERMINAL_CODES
    client = make("not a valid room!", user_id="u1")
    states = collect(client, "state")
    client.connect()
    with pytest.raises(DormError):
        await client.wait_open(5)
    await asyncio.sleep(0.3)
    assert client.close_code == 4400
    assert [s["state"] for s in states].count("connecting") == 1
    assert "reconnecting" not in [s["state"] for s in states]


async def test_error_reply_raises_and_reconciles_the_optimistic_copy(make: Callable[..., DormClient]) -> None:
    client = make(room_name("py"), user_id="u1")
    local = collect(client, "erase")
    rejects = collect(client, "reject")
    await client.connect().wait_open()
    handle = client.send("erase", {"seq": 999}, optimistic=True)
    assert local == [{"type": "erase", "id": handle.id, "userId": "u1", "payload": {"seq": 999}, "pending": True}]
    with pytest.raises(DormError) as err:
        await handle
    assert err.value.reason == "invalid_message" and err.value.id == handle.id
    assert [r["id"] for r in rejects] == [handle.id]
    assert (await client.send("draw", {"fine": 1}))["seq"] == 1


async def test_presence_members_and_status(make: Callable[..., DormClient]) -> None:
    room = room_name("py")
    alice = make(room, user_id="alice")
    await alice.connect().wait_open()
    bob = make(room, user_id="bob")
    await bob.connect().wait_open()
    assert sorted(m["userId"] for m in bob.members) == ["alice", "bob"]
    await until(lambda: any(m["userId"] == "bob" for m in alice.members), "alice sees bob")
    bob.set_presence("typing")
    await until(lambda: any(m == {"userId": "bob", "status": "typing"} for m in alice.members), "bob typing")
    await bob.close()
    await until(lambda: all(m["userId"] != "bob" for m in alice.members), "bob left")


async def test_latency_and_unsubscribe(make: Callable[..., DormClient]) -> None:
    client = make(room_name("py"), user_id="u1")
    latencies = collect(client, "latency")
    calls: list[Any] = []
    off = client.on("latency", calls.append)
    await client.connect().wait_open()
    await until(lambda: latencies, "first latency")
    assert client.latency_ms is not None and 0 <= client.latency_ms < 5000
    off()
    client.ping()
    await until(lambda: len(latencies) >= 2, "second latency")
    assert len(calls) == 1


async def test_seq_tracking_delivers_each_durable_event_once_across_a_gap() -> None:
    """An own ack lost in a cut leaves a gap: `since` stays below it, and the
    replay after reconnect re-sends events the client already has."""
    client = DormClient("ws://127.0.0.1:9", "room-1", user_id="u1")
    draws = collect(client, "draw")

    def frame(**f: Any) -> None:
        client._on_frame(json.dumps(f))

    frame(type="welcome", room="room-1", kind="whiteboard", userId="u1", connectionId="c", seq=5, resumed=False, state={}, presence=[])
    frame(type="draw", seq=7, userId="b", payload={"n": 7}, ts=1)  # 6 is our own, its ack was lost
    frame(type="draw", seq=8, userId="b", payload={"n": 8}, ts=1)
    assert client.last_seq == 5 and "since=5" in client.url
    frame(type="welcome", room="room-1", kind="whiteboard", userId="u1", connectionId="d", seq=8, resumed=True, presence=[])
    for n in (6, 7, 8):
        frame(type="draw", seq=n, userId="u1" if n == 6 else "b", payload={"n": n}, ts=1)
    frame(type="draw", seq=9, userId="b", payload={"n": 9}, ts=1)
    assert [d["seq"] for d in draws] == [7, 8, 6, 9]
    assert client.last_seq == 9


# -- a scripted peer: a real websockets server that sends chosen frames and
# records what the client sends.


class ScriptedPeer:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.connections: list[Any] = []
        self.url = ""

    async def handler(self, ws: Any) -> None:
        self.connections.append(ws)
        await ws.send(json.dumps({"type": "welcome", "room": "r", "kind": "whiteboard", "userId": "u1", "connectionId": "c", "seq": 0, "resumed": False, "state": {}, "presence": []}))
        async for text in ws:
            self.received.append(json.loads(text))

    def sent(self, type_: str) -> list[dict[str, Any]]:
        return [f for f in self.received if f.get("type") == type_]

    async def send(self, frame: dict[str, Any]) -> None:
        await self.connections[-1].send(json.dumps(frame))


@pytest.fixture
async def peer() -> AsyncIterator[ScriptedPeer]:
    from websockets.asyncio.server import serve

    scripted = ScriptedPeer()
    async with serve(scripted.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        scripted.url = f"ws://127.0.0.1:{port}"
        yield scripted


async def test_rate_limited_pauses_then_resends_the_dropped_message(peer: ScriptedPeer) -> None:
    client = DormClient(peer.url, "r", user_id="u1", heartbeat=60)
    try:
        await client.connect().wait_open()
        a, b, d = (client.send("draw", {"n": n}) for n in (1, 2, 3))
        await until(lambda: len(peer.sent("draw")) == 3, "three draws")
        await peer.send({"type": "ack", "id": a.id, "seq": 1})
        await peer.send({"type": "rate_limited", "retryAfterMs": 200, "id": d.id})
        started = asyncio.get_running_loop().time()
        assert (await a)["seq"] == 1
        await until(lambda: len(peer.sent("draw")) == 4, "the resend")
        assert asyncio.get_running_loop().time() - started >= 0.15
        assert peer.sent("draw")[3]["id"] == d.id, "only the dropped message, with its id"
        await peer.send({"type": "rate_limited", "retryAfterMs": 50})  # no id: all unacknowledged
        await until(lambda: len(peer.sent("draw")) == 6, "both unacknowledged resent")
        assert [f["id"] for f in peer.sent("draw")[4:]] == [b.id, d.id]
        await peer.send({"type": "ack", "id": b.id, "seq": 2})
        await peer.send({"type": "ack", "id": d.id, "seq": 3})
        assert [(await b)["seq"], (await d)["seq"]] == [2, 3] and client.last_seq == 3
    finally:
        await client.close()


async def test_internal_error_is_retried_with_the_same_id_then_raised(peer: ScriptedPeer) -> None:
    client = DormClient(peer.url, "r", user_id="u1", heartbeat=60, backoff_base=0.02, internal_retries=2)
    try:
        await client.connect().wait_open()
        handle = client.send("draw", {"n": 1})
        for attempt in range(1, 4):
            await until(lambda: len(peer.sent("draw")) == attempt, f"attempt {attempt}")  # noqa: B023
            await peer.send({"type": "error", "reason": "internal", "id": handle.id})
        with pytest.raises(DormError) as err:
            await handle
        assert err.value.reason == "internal"
        assert {f["id"] for f in peer.sent("draw")} == {handle.id}
    finally:
        await client.close()


async def test_a_socket_never_welcomed_is_dropped_after_the_connect_timeout_and_retried() -> None:
    """A server that accepts the socket but never sends its welcome (a join
    lost in an outage) must not hold the client for good: after
    ``connect_timeout`` it drops the socket and reconnects, as the JS client."""
    from websockets.asyncio.server import serve

    scripted = ScriptedPeer()
    accepted: list[float] = []

    async def silent_first(ws: Any) -> None:
        accepted.append(asyncio.get_running_loop().time())
        if len(accepted) == 1:
            await ws.wait_closed()  # accepted, never welcomed
            return
        await scripted.handler(ws)

    async with serve(silent_first, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        states: list[dict[str, Any]] = []
        client = DormClient(f"ws://127.0.0.1:{port}", "r", user_id="u1", heartbeat=60, connect_timeout=0.3, backoff_base=0.01)
        client.on("state", states.append)
        try:
            await client.connect().wait_open(timeout=5)
            assert len(accepted) == 2
            assert accepted[1] - accepted[0] >= 0.3
            assert any(s["state"] != "open" and s.get("reason") == "no welcome" for s in states), states
        finally:
            await client.close()


async def test_a_ping_is_sent_every_heartbeat_period(peer: ScriptedPeer) -> None:
    client = DormClient(peer.url, "r", user_id="u1", heartbeat=0.1)
    try:
        await client.connect().wait_open()
        await until(lambda: len(peer.sent("ping")) >= 3, "three pings")
        assert not peer.sent("heartbeat")  # one frame a period: the server takes a ping as a heartbeat
    finally:
        await client.close()


# -- real room tokens (rooms/tokens.py, the development secret shared with the server)


async def test_an_expired_token_is_refreshed_with_a_real_token(make: Callable[..., DormClient]) -> None:
    from rooms import tokens

    room = room_name("py")
    expired, _ = tokens.issue("alice", room, "write", now=time.time() - 3600)
    calls: list[dict[str, Any]] = []

    def refresh(info: dict[str, Any]) -> str:
        calls.append(info)
        return tokens.issue("alice", room, "write")[0]

    client = make(room, token=expired, refresh_token=refresh)
    await client.connect().wait_open()
    assert [c["code"] for c in calls] == [4401]
    assert client.user_id == "alice"
    assert (await client.send("draw", {"n": 1}))["seq"] == 1


async def test_token_expiry_mid_session_refreshes_and_resumes_without_loss(make: Callable[..., DormClient]) -> None:
    from rooms import tokens

    room = room_name("py")
    # Expired 7 s ago: still inside the server's 10 s leeway, which ends (and
    # closes the socket with 4401) about 3 s from now. (1 s was too little on
    # a loaded machine: a connection that took longer was refused at its
    # handshake instead, and the session never saw the expiry.)
    from rooms.conf import dorm_settings

    leeway = float(dorm_settings.TOKEN_LEEWAY_SECONDS)
    short, _ = tokens.issue("alice", room, "write", now=time.time() - 60 - (leeway - 3), ttl_seconds=60)
    refreshes: list[int] = []

    def refresh(info: dict[str, Any]) -> str:
        refreshes.append(info["code"])
        return tokens.issue("alice", room, "write")[0]

    alice = make(room, token=short, refresh_token=refresh)
    seen = collect(alice, "draw")
    welcomes = collect(alice, "welcome")
    bob = make(room, user_id="bob")
    await alice.connect().wait_open()
    await bob.connect().wait_open()
    sent = 0
    while not refreshes or len(welcomes) < 2 or sent < 15:  # through the expiry and past the resume
        await bob.send("draw", {"n": sent})
        sent += 1
        await asyncio.sleep(0.05)
        assert sent < 200, f"no expiry mid-session: refreshes {refreshes}, welcomes {welcomes}"
    await until(lambda: len(seen) == sent, "every draw reached alice")
    assert [d["seq"] for d in seen] == list(range(1, sent + 1))
    assert refreshes == [4401]
    assert [w["resumed"] for w in welcomes] == [False, True]


async def test_real_rate_limits_delay_but_never_lose_or_duplicate(tmp_path: Any) -> None:
    from tests.e2e.server import start_server

    server = start_server(
        "daphne",
        tmp_path,
        extra_env={"DORM_MESSAGE_RATE_PER_SECOND": "20", "DORM_MESSAGE_BURST": "5"},
        name="rate-limited",
    )
    try:
        room = room_name("py")
        client = DormClient(f"ws://127.0.0.1:{server.port}", room, user_id="burst", heartbeat=60)
        limited = collect(client, "rate_limited")
        await client.connect().wait_open()
        handles = [client.send("draw", {"n": n}) for n in range(30)]
        acks = [await h for h in handles]
        await client.close()
        assert limited, "the burst was rate limited"
        stored = server.events(room)
        assert len(stored) == 30
        assert sorted(json.loads(e[4])["n"] for e in stored) == list(range(30))
        assert sorted(a["seq"] for a in acks) == list(range(1, 31))
    finally:
        server.stop()
