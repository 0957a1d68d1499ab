"""PROTOCOL.md section 5 against a real server: every bad frame gets its error
reply, nothing bad is stored, and the connection stays usable.

The hypothesis test throws random frames at a live room and checks the room
keeps serving, stores only valid draws, and never closes with 1011.
"""

from __future__ import annotations

import asyncio
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.client import Connect, WsClient, event, of_type, room_name
from tests.e2e.server import DormServer

pytestmark = pytest.mark.e2e

SOFT_LIMIT = 64 * 1024  # DORM_SOFT_FRAME_LIMIT_BYTES default
HARD_LIMIT = 1024 * 1024  # the servers' frame limit


async def _still_usable(client: WsClient, watcher: WsClient) -> None:
    """The connection works after the error: a draw is acked and broadcast."""
    seq = await client.draw({"still": "ok"})
    got = await watcher.wait_for(lambda f: f.get("seq") == seq, 1)
    assert got[0]["payload"] == {"still": "ok"}


BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("not json", "{nope", "invalid_json"),
    ("json array", "[1, 2]", "invalid_json"),
    ("json string", '"draw"', "invalid_json"),
    ("NaN literal", '{"type": "draw", "payload": {"x": NaN}}', "invalid_json"),
    ("Infinity literal", '{"type": "draw", "payload": {"x": Infinity}}', "invalid_json"),
    ("-Infinity literal", '{"type": "draw", "payload": {"x": -Infinity}}', "invalid_json"),
    ("1e300", '{"type": "draw", "payload": {"x": 1e300}}', "invalid_message"),
    ("over the kind bound", '{"type": "draw", "payload": {"x": 1000001}}', "invalid_message"),
    ("missing type", '{"payload": {"x": 1}}', "invalid_message"),
    ("type not a string", '{"type": 7}', "invalid_message"),
    ("type with bad characters", '{"type": "Draw!"}', "invalid_message"),
    ("type too long", '{"type": "' + "a" * 33 + '"}', "invalid_message"),
    ("id too long", '{"type": "draw", "id": "' + "i" * 65 + '", "payload": {}}', "invalid_message"),
    ("id not a string", '{"type": "draw", "id": 5, "payload": {}}', "invalid_message"),
    ("payload of the wrong shape", '{"type": "draw", "payload": [1, 2]}', "invalid_message"),
    ("erase of a non-integer", '{"type": "erase", "payload": {"seq": "x"}}', "invalid_message"),
    ("unknown type", '{"type": "teleport", "payload": {}}', "unknown_type"),
    ("over the soft frame limit", '{"type": "draw", "payload": {"s": "' + "x" * SOFT_LIMIT + '"}}', "too_large"),
    ("binary frame on a text-only kind", b"\x00\x01binary", "invalid_message"),
]


@pytest.mark.parametrize(("label", "frame", "reason"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
async def test_bad_frames_get_their_error_and_the_connection_stays(
    server: DormServer, connect: Connect, label: str, frame: str | bytes, reason: str
) -> None:
    room = room_name()
    client = await connect(server, room, "bad")
    watcher = await connect(server, room, "w")
    await client.send_raw(frame)
    error = await client.recv_until(of_type("error"))
    assert error["reason"] == reason, f"{label}: {error}"
    assert "Traceback" not in orjson.dumps(error).decode()
    if reason == "invalid_message":
        assert error.get("detail"), f"{label}: invalid_message needs a detail"
    await _still_usable(client, watcher)
    # Nothing but the good draw was stored and broadcast.
    assert [r[1] for r in server.events(room)] == ["draw"]
    assert [f["type"] for f in watcher.events()] == ["draw"]


async def test_error_reply_carries_the_message_id_when_it_could_be_read(server: DormServer, connect: Connect) -> None:
    client = await connect(server, room_name(), "u")
    await client.send("draw", {"x": 1e300}, id="big")
    error = await client.recv_until(of_type("error"))
    assert error["id"] == "big" and error["reason"] == "invalid_message"
    await client.send("teleport", {}, id="where")
    error = await client.recv_until(of_type("error"))
    assert error["id"] == "where" and error["reason"] == "unknown_type"


async def test_erase_of_a_missing_stroke_is_refused_and_nothing_stored(server: DormServer, connect: Connect) -> None:
    room = room_name()
    client = await connect(server, room, "u")
    reply = await client.request("erase", {"seq": 42})
    assert reply["type"] == "error" and reply["reason"] == "invalid_message"
    assert server.events(room) == []


async def test_frame_over_the_hard_limit_closes_with_1009(any_server: DormServer, connect: Connect) -> None:
    room = room_name()
    client = await connect(any_server, room, "huge")
    other = await connect(any_server, room, "other")
    await client.send_raw('{"type": "draw", "payload": {"s": "' + "x" * (HARD_LIMIT + 10) + '"}}')
    assert await client.wait_closed() == 1009
    # The room is unaffected.
    await _still_usable(other, await connect(any_server, room, "w"))


@pytest.mark.server_errors_expected
async def test_repeated_abuse_closes_with_1008(server: DormServer, connect: Connect) -> None:
    room = room_name()
    abuser = await connect(server, room, "abuser")
    bystander = await connect(server, room, "bystander")
    for _ in range(150):
        try:
            await abuser.send_raw("{nope")
        except Exception:
            break  # closed under us: that is the point
    assert await abuser.wait_closed() == 1008
    errors = abuser.matching(of_type("error"))
    assert 90 <= len(errors) <= 101, len(errors)
    await _still_usable(bystander, await connect(server, room, "w"))


async def test_unknown_room_kind_types_and_ping(server: DormServer, connect: Connect) -> None:
    client = await connect(server, room_name(), "u")
    await client.send("ping", {"t": 123})
    pong = await client.recv_until(of_type("pong"))
    assert pong["payload"] == {"t": 123} and isinstance(pong["ts"], int)
    await client.send("heartbeat")
    await client.send("ping")
    assert (await client.recv_until(of_type("pong")))["type"] == "pong"
    assert not client.matching(of_type("error"))


# -- property-based: random frames never break a live room ----------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
envelope = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["draw", "erase", "undo", "redo", "cursor", "ping", "presence", "heartbeat", "x"])
        | st.text(max_size=40)
        | json_value,
        "id": st.text(max_size=70) | st.integers(),
        "payload": json_value,
    },
)


def _encode(value: object) -> str:
    # orjson refuses ints beyond 64 bits; the stdlib writes them (a client could).
    import json

    return json.dumps(value)


raw_frame = (
    envelope.map(_encode)
    | json_value.map(_encode)
    | st.text(max_size=200)
    | st.binary(max_size=64)
    | st.sampled_from(['{"type":"draw","payload":{"x":NaN}}', '{"type":"draw","payload":{"x":-Infinity}}', "\ud800"])
)


def _valid_draw(frame: str | bytes) -> bool:
    """Would the whiteboard accept this frame as a draw? (the oracle)"""
    if isinstance(frame, bytes):
        return False
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(value, dict) or value.get("type") != "draw":
        return False
    if "id" in value and not (isinstance(value["id"], str) and len(value["id"]) <= 64):
        return False
    payload = value.get("payload")
    return isinstance(payload, dict) and len(frame.encode()) <= SOFT_LIMIT and _numbers_in_bounds(payload)


def _numbers_in_bounds(value: object) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value) and abs(value) <= 1e6
    if isinstance(value, list):
        return all(_numbers_in_bounds(v) for v in value)
    if isinstance(value, dict):
        return all(_numbers_in_bounds(v) for v in value.values())
    return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(raw_frame, min_size=1, max_size=8))
def test_random_frames_never_break_a_live_room(server: DormServer, frames: list[str | bytes]) -> None:
    asyncio.run(_throw(server, frames))


async def _throw(server: DormServer, frames: list[str | bytes]) -> None:
    room = room_name("fuzz")
    client = await WsClient.open(server.url(room, userId="fuzz"))
    watcher = await WsClient.open(server.url(room, userId="watch"))
    try:
        for frame in frames:
            if isinstance(frame, str):
                frame = frame.encode("utf-8", "replace").decode("utf-8")
            await client.send_raw(frame)
        # A barrier: when this is acked, every frame before it was handled.
        seq = await client.draw({"barrier": 1}, id="barrier")
        await watcher.wait_for(lambda f: f.get("seq") == seq)
        client.assert_open()
        stored = server.events(room)
        assert stored[-1][0] == seq and [r[0] for r in stored] == list(range(1, seq + 1))
        for _seq, type_, _user, _cid, payload, _ts in stored[:-1]:
            assert type_ in ("draw", "erase", "undo", "redo"), type_
            assert _numbers_in_bounds(orjson.loads(payload))
        expected_draws = sum(1 for f in frames if _valid_draw(f))
        stored_draws = sum(1 for r in stored[:-1] if r[1] == "draw")
        # Retries of the same id are applied once: at most the valid count.
        assert stored_draws <= expected_draws
        assert [f["seq"] for f in watcher.events()] == [r[0] for r in stored]
    finally:
        await client.close()
        await watcher.close()
    assert client.close_code != 1011 and watcher.close_code != 1011


__all__ = ["event"]
