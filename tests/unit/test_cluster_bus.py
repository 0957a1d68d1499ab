"""The distributed mode's receiving side of the room bus, and lease doubt,
without Redis: what reaches this process's sockets when the bus shows a gap
or a second owner, and when a commit must prove its lease again
(cluster.py; the e2e versions restart a real Redis under two daphne
processes: tests/e2e/test_distributed.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import override_settings

from rooms.runtime.cluster import LeaseLost
from rooms.runtime.connection import Connection, ConnectionState
from rooms.runtime.registry import Runtime

pytestmark = pytest.mark.django_db(transaction=True)

# Nothing listens there: any Redis call fails at once.
NO_REDIS = "redis://127.0.0.1:1/0"


class Recorder:
    """A socket's ASGI send and its direct frame writer (as on daphne), in one log."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def write_frame(self, frame: bytes) -> bool:
        self.sent.append({"type": "websocket.send", "text": _text_of(frame)})
        return True

    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent if m.get("type") == "websocket.send"]


def _text_of(frame: bytes) -> str:
    n, offset = frame[1] & 0x7F, 2
    if n == 126:
        offset = 4
    elif n == 127:
        offset = 10
    return frame[offset:].decode()


def _runtime() -> Runtime:
    with override_settings(REDIS_URL=NO_REDIS):
        runtime = Runtime(distributed=True)
    assert runtime.cluster is not None
    runtime.cluster.me = "me"
    return runtime


def _open_socket(runtime: Runtime, room: str, user: str = "u") -> tuple[Connection, Recorder]:
    recorder = Recorder()
    conn = Connection(room, user, "write", recorder)
    conn.write_frame = recorder.write_frame  # events are written at once, as on daphne
    conn.state = ConnectionState.OPEN
    runtime.hub.add(conn)
    return conn, recorder


async def test_after_a_bus_gap_no_later_event_reaches_the_closing_sockets() -> None:
    """The reader finds a gap, closes the room's sockets and reads on: the
    events after the gap must not reach a socket that is only about to close
    (its client takes one connection's run as gapless)."""
    runtime = _runtime()
    cluster = runtime.cluster
    assert cluster is not None
    conn, recorder = _open_socket(runtime, "r")
    cluster.bus_seq["r"] = 39
    cluster.on_bus_event("r", "owner", 40, None, '{"seq":40}')
    cluster.on_bus_event("r", "owner", 42, None, '{"seq":42}')  # 41 lost: the gap
    cluster.on_bus_event("r", "owner", 43, None, '{"seq":43}')  # read before the close task ran
    await asyncio.sleep(0.05)
    events = [t for t in recorder.texts() if t.startswith('{"seq"')]
    assert events == ['{"seq":40}'], events
    assert conn.state is ConnectionState.CLOSED and conn.close_code == 1001


async def test_a_held_room_never_takes_another_writers_events() -> None:
    """This process runs the room: its sockets get its actor's stream only.
    An older event of another origin (the previous owner's last ones) is
    dropped; a newer one means a second owner (Redis lost the leases): the
    room is let go and its sockets resume elsewhere."""
    runtime = _runtime()
    cluster = runtime.cluster
    assert cluster is not None
    actor = runtime.registry.wake("held")
    await asyncio.sleep(0)  # started below by hand, not by a load
    actor.task.cancel()
    actor.started = True
    actor.last_seq = 10
    runtime.registry.actors["held"] = actor
    cluster.held.add("held")
    conn, recorder = _open_socket(runtime, "held")

    cluster.on_bus_event("held", "previous-owner", 9, None, '{"seq":9}')
    cluster.on_bus_event("held", "previous-owner", None, None, '{"type":"cursor"}')
    await asyncio.sleep(0.05)
    assert recorder.texts() == [] and "held" in cluster.held and conn.state is ConnectionState.OPEN

    cluster.on_bus_event("held", "second-owner", 11, None, '{"seq":11}')
    await asyncio.sleep(0.05)
    assert not any(t.startswith('{"seq"') for t in recorder.texts())
    assert "held" not in cluster.held
    assert conn.state is ConnectionState.CLOSED and conn.close_code == 1001


async def test_a_redis_failure_makes_the_next_commit_prove_its_lease() -> None:
    """Renewed a moment ago, a lease needs no Redis call before a commit.
    After a failed Redis connection it does (Redis may have restarted empty
    and another process claimed the room): here Redis is unreachable, so the
    proof fails and nothing is committed on an unproven lease."""
    runtime = _runtime()
    cluster = runtime.cluster
    assert cluster is not None
    cluster.held.add("r")
    await cluster.confirm_lease("r")  # recent renewal: no Redis call
    cluster.redis_failed()
    with pytest.raises(Exception) as raised:
        await cluster.confirm_lease("r")
    assert not isinstance(raised.value, AssertionError)
    cluster.held.discard("r")
    with pytest.raises(LeaseLost):
        await cluster.confirm_lease("r")


class _FakeSubscriber:
    """Enough of the bus's subscriber connection: confirmations in order."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.replies: asyncio.Queue[list[Any]] = asyncio.Queue()

    async def subscribe(self, channel: str) -> None:
        self.replies.put_nowait([b"subscribe", channel.encode(), 1])

    async def read(self) -> list[Any]:
        if self.broken:
            raise ConnectionError("Redis went away")
        return [await self.replies.get()]

    async def aclose(self) -> None:
        pass


class _FakeRedis:
    def __init__(self) -> None:
        self.back = asyncio.Event()  # Redis answers pings again

    async def ping(self) -> bool:
        await self.back.wait()
        return True


async def test_a_subscribe_made_while_the_bus_reconnects_is_confirmed() -> None:
    """Redis comes back while the bus reader is still reconnecting; a socket
    joins meanwhile and its route subscribes the room. The reader then
    re-subscribes the rooms it had: the route's own confirmation must still
    reach it (it used to be taken by the reader's new future, and the route
    waited 5 s, then refused its socket with 1013: most of a Redis restart's
    recovery time in the fault campaign)."""
    runtime = _runtime()
    cluster = runtime.cluster
    assert cluster is not None
    bus = cluster.bus
    fake = _FakeRedis()
    bus.client = fake  # type: ignore[assignment]
    bus.new_subscriber = _FakeSubscriber  # type: ignore[method-assign]
    bus.subscriber = _FakeSubscriber(broken=True)  # type: ignore[assignment]
    bus.subscribed.add("r")
    _open_socket(runtime, "r")  # a socket of the room: re-subscribed after the reconnect
    bus.reader = asyncio.get_running_loop().create_task(bus._read_loop())
    try:
        await asyncio.sleep(0.05)  # the reader lost its connection and waits for Redis
        joining = asyncio.ensure_future(bus.subscribe("r"))  # Redis takes commands again
        await asyncio.sleep(0.05)
        fake.back.set()  # ... and answers the reader's ping
        await asyncio.wait_for(joining, 2.0)
        assert "r" in bus.subscribed
    finally:
        bus.reader.cancel()


async def test_sockets_fed_by_the_bus_must_be_where_a_new_local_actor_starts() -> None:
    """This process takes over a room it followed on the bus. Its open
    sockets saw up to the bus's last seq; the new local actor goes on from
    the seq it loaded. Equal: they stay. The log ahead of them (the previous
    owner stopped with an unpublished commit that did land): they close
    with 1001 and resume, or they would skip it. Sockets waiting for their
    welcome get it from the new actor."""
    runtime = _runtime()
    cluster = runtime.cluster
    assert cluster is not None
    kept, _ = _open_socket(runtime, "even")
    cluster.bus_seq["even"] = 114
    cluster.adopted("even", 114)
    assert kept.state is ConnectionState.OPEN

    behind, _ = _open_socket(runtime, "ahead")
    waiting, _ = _open_socket(runtime, "ahead")
    waiting.state = ConnectionState.PENDING
    cluster.bus_seq["ahead"] = 114
    cluster.adopted("ahead", 115)
    assert behind.state is ConnectionState.CLOSED and behind.close_code == 1001
    assert waiting.state is ConnectionState.PENDING
    await asyncio.sleep(0.01)


async def test_a_failed_bus_publish_restarts_the_rooms_it_carried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis cannot take the owner's batch (here: nothing listens): the
    other processes' sockets may have missed those events, so every room of
    the batch restarts, and leases are held in doubt until proven."""
    runtime = _runtime()
    cluster = runtime.cluster
    assert cluster is not None
    failed: list[tuple[str, str]] = []
    monkeypatch.setattr(cluster, "room_failed", lambda room, why: failed.append((room, why)))
    failures = cluster._redis_failures
    bus = cluster.bus
    bus.start()
    try:
        bus.publish_event("a", '{"type":"draw","seq":1}', 1, None)
        bus.publish_event("b", '{"type":"draw","seq":4}', 4, None)
        await asyncio.wait_for(bus.flushed(), 5)
    finally:
        await bus.stop()
    assert sorted(failed) == [("a", "bus publish failed"), ("b", "bus publish failed")]
    assert cluster._redis_failures == failures + 1
