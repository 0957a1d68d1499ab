"""A room while its database stalls or is unavailable (docs/runtime.md, "Database outage").

In-process: the actor's commit and reload are replaced by ones that block on
an event or fail like an unreachable database, so each guarantee is checked
without a real outage (tests/e2e/test_db_outage.py makes real ones).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError, connection

from rooms.models import Event
from rooms.runtime import actor as actor_module
from rooms.runtime import db_watchdog, publish
from rooms.runtime.db_watchdog import DatabaseTimeout

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def log_of(room: str) -> list[tuple[int, str, str]]:
    return list(Event.objects.filter(room__slug=room).order_by("seq").values_list("seq", "user_id", "client_id"))


async def frames(client: Any, seconds: float) -> list[dict[str, Any]]:
    """Every frame ``client`` gets within ``seconds``."""
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        # receive_nothing, not a timed receive: a timeout there cancels the app.
        if await client.ws.receive_nothing(left):
            break
        got.append(await client.recv())
    return got


async def durable_frames(client: Any, seconds: float) -> list[dict[str, Any]]:
    """Acks, errors and durable events (frames with a seq) within ``seconds``."""
    return [f for f in await frames(client, seconds) if f["type"] in ("ack", "error") or "seq" in f]


class Gate:
    """Commits wait for ``open()``; ``entered`` is set when one is blocked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
        self.real = actor_module.db_commit_batch
        self.go = asyncio.Event()
        self.entered = asyncio.Event()
        monkeypatch.setattr(actor_module, "db_commit_batch", self.commit)
        # A failed assertion must not leave a commit hanging for the next test.
        request.addfinalizer(self.go.set)

    async def commit(self, *args: Any, **kwargs: Any) -> None:
        self.entered.set()
        await self.go.wait()
        await self.real(*args, **kwargs)

    def open(self) -> None:
        self.go.set()


async def test_ephemeral_frames_and_presence_flow_while_a_commit_is_blocked(
    connect: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    a = await connect("stall", userId="a")
    b = await connect("stall", userId="b")
    gate = Gate(monkeypatch, request)
    await a.send("draw", {"x": 1}, id="d1")
    await asyncio.wait_for(gate.entered.wait(), 2)
    # The commit hangs; the same sender's cursor and status still reach b.
    started = time.monotonic()
    await a.send("cursor", {"x": 5, "y": 6}, id="c1")
    cursor = await b.recv_type("cursor", timeout=1.0)
    assert cursor["payload"] == {"x": 5, "y": 6} and "seq" not in cursor
    assert await a.recv_type("ack") == {"type": "ack", "id": "c1"}  # ephemeral: no seq
    await a.send("presence", {"status": "away"})
    presence = await b.recv_type("presence", timeout=1.0)
    assert presence["userId"] == "a"
    assert time.monotonic() - started < 1.0
    # A durable frame of b waits behind the commit in flight (output gate).
    await b.send("draw", {"x": 2}, id="d2")
    assert await durable_frames(b, 0.3) == []
    assert await durable_frames(a, 0.1) == []
    gate.open()
    assert (await a.recv_type("ack"))["seq"] == 1
    assert (await b.recv_type("draw"))["seq"] == 1
    assert (await b.recv_type("ack"))["seq"] == 2
    assert (await a.recv_type("draw"))["seq"] == 2
    assert [r[0] for r in await log_of("stall")] == [1, 2]


async def test_a_join_and_its_frames_wait_for_the_commit_in_flight(
    connect: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    a = await connect("stall-join", userId="a")
    gate = Gate(monkeypatch, request)
    await a.send("draw", {"x": 1}, id="d1")
    await asyncio.wait_for(gate.entered.wait(), 2)
    c = await connect("stall-join", userId="c", expect_welcome=False)
    await c.send("cursor", {"x": 9, "y": 9})
    # No welcome (it would show an uncommitted stroke or miss it), and c's
    # cursor is not relayed before c's join.
    assert await c.nothing(0.3)
    assert [f for f in await frames(a, 0.1) if f["type"] != "presence"] == []
    gate.open()
    welcome = await c.recv_type("welcome")
    assert welcome["seq"] == 1
    assert [s["payload"] for s in welcome["state"]["strokes"]] == [{"x": 1}]
    assert (await a.recv_type("user_joined"))["userId"] == "c"
    assert (await a.recv_type("cursor"))["userId"] == "c"


class Outage:
    """The database "down": commits and reloads fail like an unreachable server."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, commit_lands: bool = False) -> None:
        self.down = True
        self.commit_lands = commit_lands
        self.real_commit = actor_module.db_commit_batch
        self.real_reload = actor_module.db_reload_room
        self.reload_attempts = 0
        monkeypatch.setattr(actor_module, "db_commit_batch", self.commit)
        monkeypatch.setattr(actor_module, "db_reload_room", self.reload)

    async def commit(self, *args: Any, **kwargs: Any) -> None:
        if not self.down:
            return await self.real_commit(*args, **kwargs)
        if self.commit_lands:
            # The COMMIT reached the disk, then the connection was aborted:
            # the actor hears "failed" for a batch that is in the log.
            await self.real_commit(*args, **kwargs)
            self.commit_lands = False
        raise DatabaseTimeout("group commit over its deadline")

    async def reload(self, *args: Any, **kwargs: Any) -> Any:
        self.reload_attempts += 1
        if self.down:
            raise OperationalError("connection refused")
        return await self.real_reload(*args, **kwargs)


async def test_storage_unavailable_refuses_durable_at_once_serves_ephemeral_and_recovers(
    runtime: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await connect("down", userId="a")
    b = await connect("down", userId="b")
    await a.send("draw", {"x": 1}, id="ok")
    assert (await a.recv_type("ack"))["seq"] == 1
    await b.recv_type("draw")
    outage = Outage(monkeypatch)
    await a.send("draw", {"x": 2}, id="lost")
    assert await a.recv_type("error") == {"type": "error", "reason": "internal", "id": "lost"}
    # Degraded: a durable frame is refused at once, nothing is broadcast.
    started = time.monotonic()
    await a.send("draw", {"x": 3}, id="refused")
    error = await a.recv_type("error")
    assert (error["reason"], error["id"]) == ("internal", "refused")
    assert time.monotonic() - started < 0.3
    # Ephemeral traffic flows.
    await a.send("cursor", {"x": 1, "y": 1})
    assert (await b.recv_type("cursor"))["userId"] == "a"
    assert await durable_frames(b, 0.2) == []  # no draw leaked
    # A new connection would need a welcome: 1013, try again later.
    c = await connect("down", userId="c", expect_welcome=False)
    code, reason = await c.closed_with()
    assert code == 1013 and "storage unavailable" in reason
    # A server-side call is refused clearly; a REST publish gets `internal`
    # with the reason, which the API answers with 503 and Retry-After.
    with pytest.raises(actor_module.StorageUnavailable):
        await runtime.registry.call("down", _noop)
    with pytest.raises(publish.Unavailable) as refused:
        await publish.publish("down", "api", "draw", {"x": 9}, "rest-1")
    assert "storage unavailable" in refused.value.detail  # rooms/api/errors.py: Unavailable -> 503
    # The database returns: no manual step, the room continues after seq 1.
    outage.down = False
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        await a.send("draw", {"x": 4}, id="retry")
        frame = await a.recv()
        while frame["type"] not in ("ack", "error"):
            frame = await a.recv()
        if frame["type"] == "ack":
            break
        await asyncio.sleep(0.1)
    assert frame == {"type": "ack", "id": "retry", "seq": 2}
    assert (await b.recv_type("draw"))["seq"] == 2
    await a.send("draw", {"x": 4}, id="retry")  # a retry of the acked id: applied once
    assert (await a.recv_type("ack"))["seq"] == 2
    assert [r[0] for r in await log_of("down")] == [1, 2]
    d = await connect("down", userId="d")
    assert d.welcome["seq"] == 2
    assert [s["payload"] for s in d.welcome["state"]["strokes"]] == [{"x": 1}, {"x": 4}]


async def _noop(room: Any) -> None:
    return None


async def test_an_in_doubt_commit_found_in_the_log_is_broadcast_and_acked_to_its_retry(
    connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await connect("doubt", userId="a")
    b = await connect("doubt", userId="b")
    outage = Outage(monkeypatch, commit_lands=True)
    await a.send("draw", {"x": 1}, id="x1")
    assert (await a.recv_type("error"))["id"] == "x1"  # the commit "failed"
    outage.down = False
    # Recovery reads the log: seq 1 is there. Everyone sees it, once.
    assert (await b.recv_type("draw", timeout=3))["seq"] == 1
    drawn = await a.recv_type("draw", timeout=1)  # the sender too: it was told "internal"
    assert drawn["seq"] == 1 and drawn["payload"] == {"x": 1}
    await a.send("draw", {"x": 1}, id="x1")  # the client's retry
    assert await a.recv_type("ack") == {"type": "ack", "id": "x1", "seq": 1}
    await a.send("draw", {"x": 2}, id="x2")
    assert (await a.recv_type("ack"))["seq"] == 2
    assert await log_of("doubt") == [(1, "a", "x1"), (2, "a", "x2")]
    assert (await b.recv_type("draw"))["seq"] == 2


@database_sync_to_async
def _endless_query(timeout: float) -> None:
    with db_watchdog.deadline(timeout):
        with connection.cursor() as cursor:
            cursor.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")


async def test_the_watchdog_aborts_a_database_call_past_its_deadline(runtime: Any) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseTimeout):
        await _endless_query(0.3)
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 1.5, elapsed
    # The connection is usable again for the next call.
    assert await log_of("nothing-here") == []


async def test_the_watchdog_parks_while_nothing_is_armed_and_still_aborts_the_next_call(runtime: Any) -> None:
    """An idle server's watchdog thread does not wake 20 times a second; the
    first call armed after it parked is still cut at its deadline."""
    watchdog = db_watchdog.watchdog
    await log_of("nothing-here")  # a call: the thread exists and has polled
    deadline = time.monotonic() + 2
    while watchdog._polling.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not watchdog._polling.is_set(), "the thread did not park with nothing armed"
    parks = watchdog.parks
    await asyncio.sleep(0.3)
    assert watchdog.parks == parks  # asleep, not waking to look
    started = time.monotonic()
    with pytest.raises(DatabaseTimeout):
        await _endless_query(0.3)
    assert 0.25 < time.monotonic() - started < 1.5


async def test_a_failed_access_lookup_closes_with_1013_not_1011(connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rooms import consumer

    async def unreachable(slug: str) -> Any:
        raise DatabaseTimeout("database call over its deadline")

    monkeypatch.setattr(consumer, "db_load_access", unreachable)
    client = await connect("no-db", userId="a", expect_welcome=False)
    assert await client.closed_with() == (1013, "storage unavailable, retry later")


async def test_a_room_that_cannot_reach_redis_at_wake_refuses_with_1013_and_logs_a_warning(
    runtime: Any, connect: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis restart while rooms wake (seen by the fault campaign): the
    joiners are told to retry (1013), and the log says WARNING, not ERROR
    with a traceback, as for an unreachable database."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def unreachable(room: str) -> Any:
        raise RedisConnectionError("Connection closed by server.")

    caplog.set_level("INFO", logger="dorm.rooms")
    monkeypatch.setattr(runtime.presence, "members", unreachable)
    client = await connect("no-redis", userId="a", expect_welcome=False)
    code, _reason = await client.closed_with()
    assert code == 1013
    assert any("actor start failed room=no-redis" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_join_that_fails_in_a_running_room_is_refused_with_1013_not_left_waiting(
    runtime: Any, connect: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis drops while a running room handles a join (its presence entry
    cannot be written: seen by the fault campaign). The joiner must be told
    to retry (1013) at once: a socket left without its welcome waits for
    its client's own timeout (10 s in the shipped clients) before retrying.
    The room goes on serving its other sockets."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    first = await connect("join-fails", userId="a")
    real_join = runtime.presence.join

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Connection closed by server.")

    caplog.set_level("INFO", logger="dorm.rooms")
    monkeypatch.setattr(runtime.presence, "join", unreachable)
    refused = await connect("join-fails", userId="b", expect_welcome=False)
    assert await refused.closed_with() == (1013, "room unavailable, retry later")
    assert any("item failed room=join-fails item=Join" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    monkeypatch.setattr(runtime.presence, "join", real_join)
    again = await connect("join-fails", userId="b")
    assert again.welcome["type"] == "welcome"
    await first.send("draw", {"x": 1}, id="d1")
    assert (await first.recv_type("ack"))["seq"] == 1
