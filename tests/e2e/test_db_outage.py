"""Database outage (docs/runtime.md, "Database outage"): real servers, real outages.

- Embedded (SQLite): another process holds the database's write lock for a
  few seconds (``BEGIN EXCLUSIVE``), as a backup or a stuck admin shell would.
- PostgreSQL: the server's connection goes through a TCP proxy that freezes
  (``pause``: queries hang, nothing fails on its own) or drops every
  connection (``cut``).

During the outage durable messages get ``error``/``internal`` within the
deadline (no ack, no broadcast, no seq consumed) while cursors and presence
keep flowing; when the database returns the room continues from the right
seq with no manual step, and retried ids are applied once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.e2e.client import Connect, of_type, room_name
from tests.e2e.conftest import STARTED, tracked
from tests.e2e.server import DormServer, start_server
from tests.e2e.services import REDIS_TEST_URL, check_redis, fresh_postgres_database
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

DB_TIMEOUT = 1.0  # DORM_DB_TIMEOUT_SECONDS of these servers
# libpq waits at least 2 s to connect (connect_timeout), and a connect cannot
# be aborted: a call that must reconnect to a frozen PostgreSQL may take that long.
PG_CONNECT_TIMEOUT = 2.0
OUTAGE_SECONDS = 4.0
CURSOR_EVERY = 0.02
DURABLE_EVERY = 0.25
# Cursor latency bounds during the outage. Without the pipelined commit a
# cursor waits behind the commit in flight (the whole DB_TIMEOUT) and behind
# every reload attempt, so p99 would be near a second. The PostgreSQL variant
# crosses two processes and Redis on a shared CI machine: a looser p99.
LATENCY_P99_MAX = 0.3
LATENCY_P99_MAX_CLUSTER = 0.5
LATENCY_P50_MAX = 0.1
# Every measurement, printed at the end of the session (-s) and in failures.
MEASURED: dict[str, dict[str, float]] = {}


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Outcome:
    cursor_latencies: list[float] = field(default_factory=list)
    cursors_sent: int = 0
    durable_errors: list[tuple[str, float]] = field(default_factory=list)  # (id, seconds to the error)
    durable_acks_during: list[str] = field(default_factory=list)
    presence_latency: float | None = None
    recovery_seconds: float = 0.0
    first_seq_after: int = 0


async def outage_scenario(
    servers: tuple[DormServer, DormServer], connect: Connect, begin: Callable[[], None], end: Callable[[], None]
) -> tuple[Outcome, str, list[str]]:
    """The scenario of every variant; ``begin``/``end`` make and lift the outage."""
    room = room_name("outage")
    writer = await connect(servers[0], room, "w")
    mover = await connect(servers[1], room, "m")
    watcher = await connect(servers[1], room, "v")
    for n in range(3):
        assert await writer.draw({"n": n}, id=f"pre{n}") == n + 1
    await watcher.wait_for(of_type("draw"), 3)
    out = Outcome()
    stop = asyncio.Event()
    sent_at: dict[int, float] = {}
    failed: list[str] = []

    async def cursors() -> None:
        i = 0
        while not stop.is_set():
            sent_at[i] = time.monotonic()
            await mover.send("cursor", {"x": i, "y": 0})
            i += 1
            await asyncio.sleep(CURSOR_EVERY)
        out.cursors_sent = i

    async def durables() -> None:
        k = 0
        pending: list[asyncio.Task[None]] = []

        async def one(client_id: str) -> None:
            started = time.monotonic()
            reply = await writer.request("draw", {"n": client_id}, id=client_id, timeout=DB_TIMEOUT + 10)
            if reply["type"] == "ack":
                out.durable_acks_during.append(client_id)
            else:
                assert reply["reason"] == "internal", reply
                out.durable_errors.append((client_id, time.monotonic() - started))
                failed.append(client_id)

        while not stop.is_set():
            pending.append(asyncio.ensure_future(one(f"o{k}")))
            k += 1
            await asyncio.sleep(DURABLE_EVERY)
        await asyncio.gather(*pending)

    async def presence() -> None:
        await asyncio.sleep(OUTAGE_SECONDS / 3)
        mark = watcher.mark()
        started = time.monotonic()
        await mover.send("presence", {"status": "away"})
        frame = await watcher.recv_until(
            lambda f: f.get("type") == "presence" and f.get("userId") == "m" and f.get("payload", {}).get("status") == "away",
            timeout=2,
        )
        assert watcher.frames.index(frame) >= mark
        out.presence_latency = time.monotonic() - started

    mark = watcher.mark()
    await asyncio.to_thread(begin)
    began = time.monotonic()
    tasks = [asyncio.ensure_future(t()) for t in (cursors, durables, presence)]
    await asyncio.sleep(OUTAGE_SECONDS)
    stop.set()
    await asyncio.gather(*tasks)
    # Cursor latency during the outage, at the watcher (another socket).
    slow = []
    for frame, at in zip(watcher.frames[mark:], watcher.received_at[mark:]):
        if frame.get("type") == "cursor" and frame.get("userId") == "m":
            sent = sent_at[frame["payload"]["x"]]
            out.cursor_latencies.append(at - sent)
            if at - sent > 0.1:
                slow.append((round(sent - began, 2), round(at - sent, 3)))
    if slow:
        print(f"\nslow cursors (sent after outage start s, latency s): {slow[:20]}")
    # Nothing durable leaked to others during the outage.
    leaked = [f for f in watcher.frames[mark:] if f.get("type") == "draw"]
    assert leaked == [], leaked
    await asyncio.to_thread(end)
    # The database is back: retry every refused id (what a client does) until acked.
    returned = time.monotonic()
    first = failed[0]
    while True:
        reply = await writer.request("draw", {"n": first}, id=first, timeout=DB_TIMEOUT + 10)
        if reply["type"] == "ack":
            break
        assert time.monotonic() - returned < 20, "the room did not recover"
        await asyncio.sleep(0.1)
    out.recovery_seconds = time.monotonic() - returned
    out.first_seq_after = reply["seq"]
    acked = {first: reply["seq"]}
    for client_id in failed[1:]:
        reply = await writer.request("draw", {"n": client_id}, id=client_id)
        assert reply["type"] == "ack", reply
        acked[client_id] = reply["seq"]
    # A second retry of each: the same seq, applied once.
    for client_id in failed:
        reply = await writer.request("draw", {"n": client_id}, id=client_id)
        assert reply == {"type": "ack", "id": client_id, "seq": acked[client_id]}
    total = 3 + len(failed)
    draws = await watcher.wait_for(of_type("draw"), total, timeout=10)
    assert [d["seq"] for d in draws] == list(range(1, total + 1)), "the watcher saw one gapless order"
    return out, room, failed


def record(name: str, out: Outcome) -> dict[str, float]:
    lat = out.cursor_latencies
    errors = [s for _, s in out.durable_errors]
    numbers = {
        "cursors_sent": out.cursors_sent,
        "cursors_received": len(lat),
        "cursor_p50_ms": 1000 * _p(lat, 0.5),
        "cursor_p99_ms": 1000 * _p(lat, 0.99),
        "cursor_max_ms": 1000 * max(lat) if lat else float("nan"),
        "durable_refused": len(errors),
        "first_error_s": errors[0] if errors else float("nan"),
        "max_error_s": max(errors) if errors else float("nan"),
        "median_error_s": statistics.median(errors) if errors else float("nan"),
        "presence_ms": 1000 * (out.presence_latency or float("nan")),
        "recovery_s": out.recovery_seconds,
    }
    MEASURED[name] = numbers
    print(f"\n{name}: " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()))
    return numbers


def check(out: Outcome, numbers: dict[str, float], error_within: float, p99_max: float = LATENCY_P99_MAX) -> None:
    # Durable frames were refused, none slower than the deadline plus slack;
    # none acked while the database was away.
    assert out.durable_errors, "no durable frame was refused: was there an outage?"
    assert numbers["max_error_s"] < error_within, numbers
    assert out.durable_acks_during == [], out.durable_acks_during
    # Cursors kept flowing to other clients, fast.
    assert numbers["cursors_received"] >= 0.9 * numbers["cursors_sent"], numbers
    assert numbers["cursor_p99_ms"] < p99_max * 1000, numbers
    assert numbers["cursor_p50_ms"] < LATENCY_P50_MAX * 1000, numbers
    assert out.presence_latency is not None and out.presence_latency < 1.0, numbers
    # The room continued after the last committed seq (3 before the outage).
    assert out.first_seq_after == 4, numbers
    assert numbers["recovery_s"] < 5.0, numbers


# -- embedded: SQLite, another process holds the write lock -------------------------


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DormServer]:
    yield from tracked(
        start_server(
            "daphne",
            tmp_path_factory.mktemp("db-outage"),
            extra_env={"DORM_DB_TIMEOUT_SECONDS": str(DB_TIMEOUT)},
            name="daphne-outage",
        )
    )


class SqliteLock:
    """Another connection (as another process would) holding the write lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def begin(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=10, check_same_thread=False)
        self.conn.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        assert self.conn is not None
        self.conn.execute("ROLLBACK")
        self.conn.close()


async def test_sqlite_write_lock_outage(sqlite_server: DormServer, connect: Connect) -> None:
    lock = SqliteLock(sqlite_server.db_path)
    out, room, failed = await outage_scenario((sqlite_server, sqlite_server), connect, lock.begin, lock.end)
    numbers = record("sqlite_write_lock", out)
    check(out, numbers, DB_TIMEOUT + 1.0)
    rows = sqlite_server.events(room)
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "gapless log"
    ids = [r[3] for r in rows]
    assert len(ids) == len(set(ids)) == 3 + len(failed), "every retried id stored once"
    # The server said what happened, with metadata only.
    text = sqlite_server.log_text()
    assert "storage unavailable room=" + room in text
    assert "storage recovered room=" + room in text


async def test_sqlite_new_connection_during_the_outage_still_joins_or_gets_1013(
    sqlite_server: DormServer, connect: Connect
) -> None:
    """A join needs a welcome from committed state: refused with 1013 while the
    room is degraded, never 1011, never a hang; it works again afterwards."""
    room = room_name("outage-join")
    writer = await connect(sqlite_server, room, "w")
    assert await writer.draw({"n": 1}, id="a") == 1
    lock = SqliteLock(sqlite_server.db_path)
    await asyncio.to_thread(lock.begin)
    try:
        reply = await writer.request("draw", {"n": 2}, id="b", timeout=DB_TIMEOUT + 5)
        assert reply["type"] == "error" and reply["reason"] == "internal"
        late = await connect(sqlite_server, room, "late", expect_welcome=False)
        frame = await late.recv_until(lambda f: True, timeout=DB_TIMEOUT + 5)
        assert frame == {"type": "close", "code": 1013, "reason": "storage unavailable, retry later"}, frame
        assert await late.wait_closed(5) == 1013
    finally:
        await asyncio.to_thread(lock.end)
    deadline = time.monotonic() + 10
    while True:
        again = await connect(sqlite_server, room, "late", expect_welcome=False)
        frame = await again.recv_until(lambda f: True, timeout=5)
        if frame["type"] == "welcome":
            break
        assert time.monotonic() < deadline, frame
        await asyncio.sleep(0.2)
    assert frame["seq"] == 1


# -- PostgreSQL behind a proxy that freezes or cuts -----------------------------------


@pytest.fixture(scope="module")
def pg_proxy() -> Iterator[tuple[TcpProxy, str, str]]:
    """A proxy in front of a fresh database: (proxy, URL through it, direct URL)."""
    check_redis()
    with fresh_postgres_database() as url:
        parts = urlsplit(url)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
        netloc = parts.netloc.rsplit("@", 1)
        auth = netloc[0] + "@" if len(netloc) == 2 else ""
        proxied = urlunsplit((parts.scheme, f"{auth}{proxy.url_host_port}", parts.path, parts.query, parts.fragment))
        try:
            yield proxy, proxied, url
        finally:
            proxy.stop()


@pytest.fixture(scope="module")
def pg_servers(pg_proxy: tuple[TcpProxy, str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DormServer, DormServer]]:
    _proxy, url, _direct = pg_proxy
    env = {"DATABASE_URL": url, "REDIS_URL": REDIS_TEST_URL, "DORM_DB_TIMEOUT_SECONDS": str(DB_TIMEOUT)}
    directory = tmp_path_factory.mktemp("db-outage-pg")
    servers: list[DormServer] = []
    try:
        servers.append(start_server("daphne", directory, extra_env=env, name="daphne-pg-0"))
        servers.append(start_server("daphne", directory, extra_env=env, migrate=False, name="daphne-pg-1"))
    except Exception:
        for s in servers:
            s.stop()
        raise
    STARTED.extend(servers)
    try:
        yield servers[0], servers[1]
    finally:
        for s in servers:
            s.stop()


@pytest.mark.distributed
async def test_postgres_frozen_outage(pg_proxy: tuple[TcpProxy, str, str], pg_servers: tuple[DormServer, DormServer], connect: Connect) -> None:
    proxy, _url, direct = pg_proxy
    # The writer on one process, the cursor mover and the watcher on the other:
    # ephemeral traffic crosses the Redis room bus while PostgreSQL is frozen.
    out, room, failed = await outage_scenario(pg_servers, connect, proxy.pause, proxy.resume)
    numbers = record("postgres_pause", out)
    check(out, numbers, max(DB_TIMEOUT, PG_CONNECT_TIMEOUT) + 1.0, LATENCY_P99_MAX_CLUSTER)
    _check_pg_log(direct, room, 3 + len(failed))


@pytest.mark.distributed
async def test_postgres_connections_cut_recovers(pg_proxy: tuple[TcpProxy, str, str], pg_servers: tuple[DormServer, DormServer], connect: Connect) -> None:
    proxy, _url, _direct = pg_proxy
    room = room_name("outage-cut")
    writer = await connect(pg_servers[0], room, "w")
    watcher = await connect(pg_servers[1], room, "v")
    for n in range(3):
        assert await writer.draw({"n": n}, id=f"c{n}") == n + 1
    # Every database connection is reset (a server restart, a failover).
    proxy.cut()
    started = time.monotonic()
    seqs = []
    for n in range(3, 8):
        while True:
            reply = await writer.request("draw", {"n": n}, id=f"c{n}", timeout=DB_TIMEOUT + 10)
            if reply["type"] == "ack":
                seqs.append(reply["seq"])
                break
            assert time.monotonic() - started < 15, reply
            await asyncio.sleep(0.1)
    MEASURED["postgres_cut"] = {"recovery_s": time.monotonic() - started}
    print(f"\npostgres_cut: recovery_s={MEASURED['postgres_cut']['recovery_s']:.2f}")
    assert seqs == [4, 5, 6, 7, 8]
    draws = await watcher.wait_for(of_type("draw"), 8)
    assert [d["seq"] for d in draws] == list(range(1, 9))


def _check_pg_log(url: str, room: str, expected: int) -> None:
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT e.seq, e.client_id FROM rooms_event e JOIN rooms_room r ON r.id = e.room_id WHERE r.slug = %s ORDER BY e.seq",
            (room,),
        ).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "gapless log"
    ids = [r[1] for r in rows]
    assert len(ids) == len(set(ids)) == expected, "every retried id stored once"

