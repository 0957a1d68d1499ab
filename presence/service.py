"""Presence work of one ASGI process: its sockets' liveness, the ledger writes,
its beat, and the sweeps.

Per process, two tasks (started with the first socket):

- **ledger**: ``PRESENCE_LEDGER_FLUSH_SECONDS`` after the first report
  since its last write, writes what the consumers reported (``ledger.py``)
  in one transaction (asleep while there is nothing to write);
- **sweep**: every ``PRESENCE_SWEEP_SECONDS``
  1. beats (a ``PresenceProcess`` row; in Redis a key with a TTL);
  2. finds its own sockets silent for longer than the presence TTL and tells
     their rooms (an internal ``$offline`` frame: the actor broadcasts
     ``presence`` offline if that was the user's last fresh socket); a later
     frame or heartbeat sends ``$online``;
  3. (distributed) finds stale entries whose process stopped beating and
     sends their rooms a leave (``user_left`` for whoever is gone);
  4. runs :func:`presence.sweep.sweep_stale` on the ledger.

Internal frame types start with ``$``, which no client frame type can
(``[a-z_]{1,32}``), so they cannot be forged from a socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async

from presence import ledger
from presence.backends.base import StaleEntry
from presence.ledger import LedgerBuffer
from presence.models import PROCESS_GONE_CODE, PROCESS_GONE_REASON
from presence.process import PROCESS_ID
from presence.sweep import process_dead_after, sweep_stale
from rooms.conf import dorm_settings
from rooms.runtime.messages import Frame, Leave

if TYPE_CHECKING:
    from rooms.runtime.connection import Connection
    from rooms.runtime.registry import Runtime

log = logging.getLogger("dorm.presence")

# Orphan sweep: at most this many stale entries looked at per sweep.
ORPHAN_PAGE_SIZE = 500
ORPHAN_PAGES = 10

# Edge-answered keepalives' last-seen refreshes wait at most this long.
TOUCH_BATCH_MAX_SECONDS = 1.0

OFFLINE_FRAME = "$offline"
ONLINE_FRAME = "$online"

db_write_batch = database_sync_to_async(ledger.write_batch)
db_beat = database_sync_to_async(ledger.beat)
db_stopped = database_sync_to_async(ledger.stopped)
db_sweep_stale = database_sync_to_async(sweep_stale)


@dataclass(slots=True)
class Tracked:
    conn: Connection
    last_heard: float  # monotonic
    last_touch: float  # monotonic: the backend's last-seen refresh
    stale: bool = False


class PresenceService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.buffer = LedgerBuffer()
        self.tracked: dict[str, Tracked] = {}
        # The sockets that are not stale, least recently heard first (a dict
        # keeps insertion order; a frame moves its socket to the end), so the
        # sweep looks at the sockets past the TTL and no others: 10,000 idle
        # sockets are not walked every sweep.
        self._by_heard: dict[str, Tracked] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ghosts: dict[str, float] = {}  # orphan entries already sent a leave
        self._stopped = False
        self._ledger_wake: asyncio.Event | None = None
        self.sweeps = 0
        # Keepalives answered at the edge refresh the backend's last-seen in
        # batches (``touch_soon``): the sockets due, and the flush's timer.
        self._touches: dict[str, Connection] = {}
        self._touch_flush: asyncio.TimerHandle | None = None
        self._touch_tasks: set[asyncio.Task[None]] = set()  # referenced until done

    def ensure_started(self) -> None:
        if self._tasks or self._stopped:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ledger_loop(), name="dorm-presence-ledger"),
            loop.create_task(self._sweep_loop(), name="dorm-presence-sweep"),
        ]

    # -- what the consumer reports (no await: nothing on the socket's path) -----

    def opened(self, conn: Connection, user_agent: str, address: str) -> None:
        now = time.monotonic()
        self.tracked[conn.id] = self._by_heard[conn.id] = Tracked(conn, now, now)
        self.buffer.open(conn.id, conn.room, conn.user_id, user_agent, address)
        self._buffered()

    def closed(self, conn: Connection, code: int, reason: str) -> None:
        self.tracked.pop(conn.id, None)
        self._by_heard.pop(conn.id, None)
        self.buffer.close(conn.id, code, reason)
        self._buffered()

    def touch_soon(self, conn: Connection) -> None:
        """Refresh the socket's last-seen in the backend within a short batch
        window, without an await on the socket's path.

        One backend call per window for every socket due (in Redis, one
        pipelined round trip instead of one per keepalive). The window is a
        sixtieth of the TTL, at most a second: a last-seen at most that much
        older than the frame, against a TTL of 60 s.
        """
        self._touches[conn.id] = conn
        if self._touch_flush is None and not self._stopped:
            delay = min(TOUCH_BATCH_MAX_SECONDS, dorm_settings.PRESENCE_TTL_SECONDS / 60)
            self._touch_flush = asyncio.get_running_loop().call_later(delay, self._flush_touches)

    def _flush_touches(self) -> None:
        self._touch_flush = None
        due, self._touches = self._touches, {}
        entries = [(c.room, c.id, c.user_id) for c in due.values() if not c.closed]
        if entries:
            task = asyncio.get_running_loop().create_task(self._touch_all(entries))
            self._touch_tasks.add(task)
            task.add_done_callback(self._touch_tasks.discard)

    async def _touch_all(self, entries: list[tuple[str, str, str]]) -> None:
        try:
            await self.runtime.presence.touch_many(entries)
        except Exception as exc:
            # As a failed touch on the consumer's path: the sockets stay, the
            # next keepalive refreshes them (a restarted Redis lost them anyway).
            log.warning("presence touch failed sockets=%d error=%s", len(entries), type(exc).__name__)

    def _buffered(self) -> None:
        wake = self._ledger_wake
        if wake is not None and not wake.is_set():
            wake.set()

    def heard(self, conn: Connection, heartbeat: bool = False) -> bool:
        """The socket sent a frame; True when the backend's last-seen needs a refresh."""
        t = self.tracked.get(conn.id)
        if t is None:
            return heartbeat
        now = time.monotonic()
        t.last_heard = now
        by_heard = self._by_heard
        by_heard.pop(conn.id, None)
        by_heard[conn.id] = t
        if t.stale:
            t.stale = False
            t.last_touch = now
            # Back from offline: the actor re-joins it (and says so).
            self.runtime.registry.submit(conn.room, Frame(conn, ONLINE_FRAME, None, None))
            return False
        # A heartbeat always refreshes; other frames at most every quarter TTL.
        if heartbeat or now - t.last_touch > dorm_settings.PRESENCE_TTL_SECONDS / 4:
            t.last_touch = now
            return True
        return False

    # -- loops --------------------------------------------------------------------

    async def _ledger_loop(self) -> None:
        # Asleep while nothing is buffered (an idle server does not wake 4
        # times a second to find nothing); a report wakes it, and what comes
        # within the flush interval after goes in the same batch.
        wake = self._ledger_wake = asyncio.Event()
        while True:
            if not len(self.buffer):
                wake.clear()
                await wake.wait()
            await asyncio.sleep(dorm_settings.PRESENCE_LEDGER_FLUSH_SECONDS)
            await self.flush_ledger()

    async def flush_ledger(self) -> None:
        if not len(self.buffer):
            return
        opened, closed = self.buffer.take()
        try:
            await db_write_batch(PROCESS_ID, opened, closed)
        except Exception as exc:
            # Keep them for the next try (the database may be back by then).
            log.warning("ledger write failed opened=%d closed=%d error=%s", len(opened), len(closed), type(exc).__name__)
            for o in opened:
                self.buffer.opened.setdefault(o.connection_id, o)
            for c in closed:
                self.buffer.closed.setdefault(c.connection_id, c)

    async def _sweep_loop(self) -> None:
        first = True
        while True:
            try:
                await self.sweep_once(first)
                first = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence sweep failed error=%s", type(exc).__name__)
            await asyncio.sleep(dorm_settings.PRESENCE_SWEEP_SECONDS)

    async def sweep_once(self, first: bool = False) -> None:
        self.sweeps += 1
        backend = self.runtime.presence
        dead_after_ms = int(process_dead_after().total_seconds() * 1000)
        await backend.beat(PROCESS_ID, dead_after_ms)
        await db_beat(PROCESS_ID, started=first)
        self._silent_sockets()
        await self._orphans()
        await db_sweep_stale()

    def _silent_sockets(self) -> None:
        ttl = dorm_settings.PRESENCE_TTL_SECONDS
        now = time.monotonic()
        silent = []
        for t in self._by_heard.values():
            if now - t.last_heard <= ttl:
                break  # heard later than every socket before it: none after is silent
            silent.append(t)
        for t in silent:
            del self._by_heard[t.conn.id]
            if t.conn.closed:
                continue  # its close is on the way
            t.stale = True
            log.info("presence silent room=%s user=%s conn=%s", t.conn.room, t.conn.user_id, t.conn.id)
            self.runtime.registry.submit(t.conn.room, Frame(t.conn, OFFLINE_FRAME, None, None))

    async def _orphans(self) -> None:
        """Entries whose process stopped beating: their rooms get a leave."""
        cluster = self.runtime.cluster
        if cluster is None:
            return  # embedded: every entry is this process's own
        backend = self.runtime.presence
        # Silent sockets of live processes are stale too and stay so until
        # they speak or close: page past them (oldest first).
        for page in range(ORPHAN_PAGES):
            stale = await backend.stale(ORPHAN_PAGE_SIZE, page * ORPHAN_PAGE_SIZE)
            if stale:
                await self._leave_orphans(stale)
            if len(stale) < ORPHAN_PAGE_SIZE:
                break

    async def _leave_orphans(self, stale: list[StaleEntry]) -> None:
        cluster = self.runtime.cluster
        backend = self.runtime.presence
        others = sorted({s.process for s in stale if s.process != PROCESS_ID})
        alive = await backend.alive(others)
        now = time.monotonic()
        for conn_id, at in list(self._ghosts.items()):
            if now - at > 60:
                del self._ghosts[conn_id]
        from rooms.runtime.cluster import RemotePeer

        for s in stale:
            if s.process == PROCESS_ID:
                if s.connection_id not in self.tracked:
                    await backend.forget(s.room, s.connection_id, s.user_id)
                continue
            if s.process in alive or s.connection_id in self._ghosts:
                continue
            self._ghosts[s.connection_id] = now
            log.info("presence orphan room=%s user=%s conn=%s", s.room, s.user_id, s.connection_id)
            peer = RemotePeer(cluster, s.room, s.connection_id, s.user_id, "read")
            self.runtime.registry.submit(s.room, Leave(peer, PROCESS_GONE_CODE, PROCESS_GONE_REASON))

    # -- stop -----------------------------------------------------------------------

    async def stop(self, clean: bool = True) -> None:
        """Stop the loops; write what is buffered; a clean stop closes what is left open."""
        if self._stopped:
            return
        self._stopped = True
        if self._touch_flush is not None:
            self._touch_flush.cancel()
            self._touch_flush = None
        # Touches in flight: the sockets are closing, nothing to refresh.
        for task in (*self._tasks, *self._touch_tasks):
            task.cancel()
        if self._touch_tasks:
            await asyncio.gather(*self._touch_tasks, return_exceptions=True)
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if not self._tasks:
            return
        try:
            await self.flush_ledger()
            if clean:
                await db_stopped(PROCESS_ID)
        except Exception as exc:
            log.warning("presence stop bookkeeping failed error=%s", type(exc).__name__)

    def stats(self) -> dict[str, Any]:
        return {"sockets": len(self.tracked), "stale": sum(t.stale for t in self.tracked.values())}
