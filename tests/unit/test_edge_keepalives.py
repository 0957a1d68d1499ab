"""Keepalives answered at the edge (``RoomConsumer._answer_at_edge``) answer
exactly as the consumer's own path (``_text``) would, and their presence
touches reach the backend in batches (``PresenceService.touch_soon``).

The end-to-end side, through real daphne and a raw socket, is
tests/e2e/test_edge_keepalives.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.test import override_settings
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from presence.process import PROCESS_ID
from rooms.auth import Identity
from rooms.consumer import RoomConsumer
from rooms.daphne_server import ApplicationQueue
from rooms.runtime.connection import Connection, ConnectionState
from rooms.runtime.direct_write import SENT
from rooms.runtime.registry import get_runtime, reset_runtime

pytestmark = pytest.mark.django_db(transaction=True)


def dorm(**overrides: Any) -> Any:
    return override_settings(DORM={**settings.DORM, **overrides})


async def _no_send(message: dict[str, Any]) -> None:
    raise AssertionError(f"sent through ASGI: {message}")


def _open_conn(room: str, user: str) -> tuple[Connection, list[bytes]]:
    """A real Connection whose direct writes land in a list."""
    written: list[bytes] = []
    conn = Connection(room, user, "write", _no_send)
    conn.state = ConnectionState.OPEN

    def write(frame: bytes) -> int:
        written.append(frame)
        return SENT

    conn.write_frame = write
    return conn, written


class _Queue:
    """The server's queue of the socket, as the consumer sees it (``awaited_empty``)."""

    def __init__(self, waiting: bool, queued: int) -> None:
        self.waiting, self.queued = waiting, queued

    def awaited_empty(self) -> bool:
        return self.waiting and not self.queued


def _consumer(conn: Connection, waiting: bool = True, queued: int = 0) -> RoomConsumer:
    consumer = RoomConsumer()
    consumer.conn, consumer.room = conn, conn.room
    consumer._queue = _Queue(waiting, queued)
    consumer.identity = Identity(conn.user_id, conn.scope)
    return consumer


def _texts(frames: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        assert frame[0] == 0x81
        n, start = frame[1], 2
        if n == 126:
            n, start = int.from_bytes(frame[2:4], "big"), 4
        reply = orjson.loads(frame[start:])
        reply.pop("ts", None)  # the server's clock, read at each answer
        out.append(reply)
    return out


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=80))
payloads = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["t", "rtt", "x"]), st.one_of(scalars, st.dictionaries(st.text(max_size=3), scalars, max_size=2)), max_size=3),
)
envelopes = st.fixed_dictionaries(
    {"type": st.sampled_from(["ping", "heartbeat", "draw", "pong", "PING", "ping ", 7])},
    optional={"payload": payloads, "id": st.one_of(st.text(max_size=70), st.integers(-(2**63), 2**63 - 1), st.none())},
)
frames = st.one_of(
    envelopes.map(lambda e: orjson.dumps(e).decode()),
    st.text(max_size=60).map(lambda s: '{"type":"ping","payload":' + s + "}"),
    st.sampled_from(['"ping"', '["ping"]', '{"type":"ping"', "ping", '{"type":"p\\u0069ng"}', '{"type":"ping","type":"draw"}']),
)


async def _both_ways(text: str) -> tuple[bool, list[bytes], str | None, list[bytes]]:
    await reset_runtime()
    try:
        # Frames for the room are only collected: this is about what the
        # edge takes, not about the actor (tests/unit/test_fuzz_room.py).
        get_runtime().registry.submit = lambda room, message: None  # type: ignore[method-assign]
        edge_conn, edge_written = _open_conn("edge", "u")
        answered = _consumer(edge_conn)._answer_at_edge(text)
        path_conn, path_written = _open_conn("edge", "u")
        keepalive = await _consumer(path_conn)._text(path_conn, text, 0.0)
        return answered, edge_written, keepalive, path_written
    finally:
        await reset_runtime()


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=frames)
def test_the_edge_answers_a_keepalive_as_the_consumer_would_and_passes_on_everything_else(text: str) -> None:
    answered, edge_written, keepalive, path_written = asyncio.run(_both_ways(text))
    if answered:
        assert keepalive is not None, f"answered at the edge, but the consumer takes {text!r} for the room's"
        assert _texts(edge_written) == _texts(path_written)
    else:
        assert not edge_written, "passed on after writing"
        if keepalive is not None:
            # Only a keepalive whose type is spelled with escapes is left to
            # the consumer: what client libraries write is taken here.
            assert '"ping"' not in text and '"heartbeat"' not in text, text


async def test_the_edge_passes_on_while_the_consumer_has_something_of_the_socket_in_hand(runtime: Any) -> None:
    ping = '{"type":"ping","payload":{"t":1}}'
    conn, written = _open_conn("busy", "u")
    assert not _consumer(conn, waiting=False)._answer_at_edge(ping)  # mid-frame
    assert not _consumer(conn, queued=1)._answer_at_edge(ping)  # a frame waits before it
    conn.state = ConnectionState.PENDING
    assert not _consumer(conn)._answer_at_edge(ping)  # its welcome not sent yet
    conn.state = ConnectionState.OPEN
    conn.write_frame = lambda frame: 0  # the server could not write it: NOT_WRITTEN
    before = runtime.keepalives_at_edge
    assert not _consumer(conn)._answer_at_edge(ping)
    assert not written and runtime.keepalives_at_edge == before
    conn, written = _open_conn("busy", "u")
    assert _consumer(conn)._answer_at_edge(ping)
    assert _texts(written) == [{"type": "pong", "payload": {"t": 1}}]
    assert runtime.keepalives_at_edge == before + 1


async def test_the_queue_is_awaited_empty_only_while_its_reader_waits_on_nothing() -> None:
    queue = ApplicationQueue()
    assert not queue.awaited_empty()  # nobody reads yet
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert queue.awaited_empty()
    queue.put_nowait("frame")
    assert not queue.awaited_empty()  # queued, the reader not yet run
    assert await reader == "frame"
    assert not queue.awaited_empty()  # the reader has it in hand
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert queue.awaited_empty()
    reader.cancel()


# -- presence touches from the edge, in batches ------------------------------------------


async def test_touch_soon_refreshes_every_open_socket_of_a_window_in_one_backend_call(runtime: Any, monkeypatch: Any) -> None:
    backend, service = runtime.presence, runtime.presence_service
    calls: list[list[tuple[str, str, str]]] = []
    real = backend.touch_many

    async def spy(entries: list[tuple[str, str, str]]) -> None:
        calls.append(list(entries))
        await real(entries)

    monkeypatch.setattr(backend, "touch_many", spy)
    with dorm(PRESENCE_TTL_SECONDS=0.6):  # a window of 10 ms
        conns = [_open_conn("batch", user)[0] for user in ("a", "b", "c")]
        for conn in conns:
            await backend.join("batch", conn.id, conn.user_id, PROCESS_ID)
        await asyncio.sleep(0.4)
        conns[2].state = ConnectionState.CLOSED  # closed inside the window: not touched
        for conn in conns + conns[:1]:  # a socket twice in one window: once
            service.touch_soon(conn)
        await asyncio.sleep(0.1)
        assert calls == [[("batch", conns[0].id, "a"), ("batch", conns[1].id, "b")]]
        await asyncio.sleep(0.3)  # past the TTL of the join, not of the touch
        assert sorted(m["userId"] for m in await backend.members("batch")) == ["a", "b"]


async def test_a_failing_backend_under_batched_touches_is_logged_and_the_next_window_tries_again(
    runtime: Any, monkeypatch: Any, caplog: Any
) -> None:
    service = runtime.presence_service
    failures = []

    async def down(entries: list[tuple[str, str, str]]) -> None:
        failures.append(len(entries))
        raise ConnectionError("presence backend down")

    monkeypatch.setattr(runtime.presence, "touch_many", down)
    conn = _open_conn("down", "a")[0]
    with dorm(PRESENCE_TTL_SECONDS=0.6), caplog.at_level(logging.WARNING, logger="dorm.presence"):
        service.touch_soon(conn)
        await asyncio.sleep(0.1)
        service.touch_soon(conn)
        await asyncio.sleep(0.1)
    assert failures == [1, 1]
    assert [r.getMessage() for r in caplog.records] == ["presence touch failed sockets=1 error=ConnectionError"] * 2


async def test_touch_many_refreshes_known_entries_and_creates_none(redis_url: str, redis_prefix: str) -> None:
    from presence.backends.memory import MemoryPresence
    from presence.backends.redis import RedisPresence

    for backend in (MemoryPresence(), RedisPresence(redis_url, redis_prefix)):
        with dorm(PRESENCE_TTL_SECONDS=1.0):
            await backend.join("r", "c1", "u", PROCESS_ID)
            await backend.join("r", "c2", "v", PROCESS_ID)
            joined = time.monotonic()
            await asyncio.sleep(0.5)
            await backend.touch_many([("r", "c1", "u"), ("r", "gone", "w")])
            # Read once c2's TTL has surely passed, and as early as that
            # allows: c1's refresh then has ~0.5 s to spare (0.2 s of margin
            # failed once on a loaded CI machine).
            await asyncio.sleep(max(0.0, joined + 1.05 - time.monotonic()))
            assert [m["userId"] for m in await backend.members("r")] == ["u"], type(backend).__name__
            assert await backend.online(["w"]) == {}
        if isinstance(backend, RedisPresence):
            await backend.close()


async def test_a_failure_after_the_pong_is_logged_and_the_ping_not_answered_twice(
    runtime: Any, monkeypatch: Any, caplog: Any
) -> None:
    def broken(conn: Connection, heartbeat: bool = False) -> bool:
        raise RuntimeError("presence bookkeeping broke")

    monkeypatch.setattr(runtime.presence_service, "heard", broken)
    conn, written = _open_conn("broken", "u")
    with caplog.at_level(logging.ERROR, logger="dorm.rooms"):
        assert _consumer(conn)._answer_at_edge('{"type":"ping","payload":{"t":3}}')
    assert _texts(written) == [{"type": "pong", "payload": {"t": 3}}]
    assert [r.getMessage() for r in caplog.records] == ["keepalive bookkeeping failed room=broken type=ping"]


async def test_stopping_cancels_touches_in_flight_without_a_warning(runtime: Any, monkeypatch: Any, caplog: Any) -> None:
    service = runtime.presence_service
    started = asyncio.Event()

    async def slow(entries: list[tuple[str, str, str]]) -> None:
        started.set()
        await asyncio.sleep(60)  # a Redis that does not answer

    monkeypatch.setattr(runtime.presence, "touch_many", slow)
    with dorm(PRESENCE_TTL_SECONDS=0.6), caplog.at_level(logging.WARNING, logger="dorm.presence"):
        service.touch_soon(_open_conn("stop", "a")[0])
        await asyncio.wait_for(started.wait(), 2)
        in_flight = set(service._touch_tasks)
        await asyncio.wait_for(service.stop(), 5)
        service.touch_soon(_open_conn("stop", "b")[0])  # after the stop: no new window
    assert in_flight and all(task.cancelled() for task in in_flight)
    assert service._touch_flush is None
    assert not [r for r in caplog.records if "touch failed" in r.getMessage()]
