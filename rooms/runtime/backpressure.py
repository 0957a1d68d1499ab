"""Bounded outbound buffers: a slow client never slows its room.

Fan-out writes every event to every socket at once and never waits for a
socket to drain (hub.py), so a client that reads slower than its room talks
piles bytes up in its server transport. Every ``BACKPRESSURE_INTERVAL_SECONDS``
this watch reads each socket's queued bytes (``direct_write.outbound_meter``):

- over ``OUTBOUND_SOFT_BYTES`` the connection is *lagging*: ephemeral events
  (cursors, typing) are no longer written to it, durable ones still are;
- over ``OUTBOUND_MAX_BYTES`` (or more than ``PENDING_MAX_FRAMES`` events
  waiting for its welcome) it is closed with 4408 and the client resumes with
  ``since``; a client that does not read even its close frame is dropped.

The watch is off the hot path: fan-out costs nothing more per socket than
one attribute read for ephemeral events, and one set insertion per event.
Memory per socket is bounded by the hard limit plus what one interval can add.

It looks only where bytes can have piled up: the sockets written to since
the last look through the ASGI ``send``, or by a direct write the socket did
not take at once (the hub and each connection record them in
``hub.written``), and the sockets still lagging (to clear the flag once they
drain). A queue only grows when something is left in it, so nothing is
missed; a fan-out whose every socket took its bytes at once costs the watch
nothing (it looked at every socket of every room written to before: ~10 %
of the server's time in the connection benchmark); and a process
whose rooms are quiet (10,000 hibernated rooms with open sockets) costs
nothing: the watch sleeps until the next write instead of reading every
socket ten times a second (measured: see docs/performance.md, "Idle CPU").
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from rooms.conf import dorm_settings
from rooms.protocol import CloseCode
from rooms.runtime.direct_write import abort_socket

if TYPE_CHECKING:
    from rooms.runtime.connection import Connection
    from rooms.runtime.hub import LocalHub

log = logging.getLogger("dorm.rooms")

TOO_SLOW = "too slow to keep up, reconnect with since"
# A closed laggard that does not read its close frame is dropped after this.
ABORT_AFTER_SECONDS = 2.0


class OutboundWatch:
    def __init__(self, hub: LocalHub) -> None:
        self.hub = hub
        self.task: asyncio.Task[None] | None = None
        self.closed_for_lag = 0
        # Lagging sockets: looked at until they drain, written to or not.
        self._lagging: set[Connection] = set()
        self._wake: asyncio.Event | None = None

    def start(self) -> None:
        if self.task is None or self.task.done():
            self._wake = asyncio.Event()
            self.hub.on_write = self._wake.set
            self.task = asyncio.get_running_loop().create_task(self._run(), name="dorm-backpressure")

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            if not self.hub.written and not self._lagging:
                wake.clear()
                await wake.wait()  # until the next write to any room
            await asyncio.sleep(dorm_settings.BACKPRESSURE_INTERVAL_SECONDS)
            try:
                self.check()
            except Exception:
                log.exception("backpressure check failed")

    def check(self) -> None:
        """Look at the sockets that may have queued bytes since the last check, and the lagging ones."""
        written = self.hub.written
        seen = set(written)
        written.clear()
        for conn in seen:
            self._look(conn)
        for conn in list(self._lagging):
            if conn not in seen:
                self._look(conn)

    def _look(self, conn: Connection) -> None:
        if conn.closed:
            self._lagging.discard(conn)
            return
        queued = conn.outbound_bytes()
        lagging = conn.lagging = queued > dorm_settings.OUTBOUND_SOFT_BYTES
        if lagging:
            self._lagging.add(conn)
        else:
            self._lagging.discard(conn)
        if queued > dorm_settings.OUTBOUND_MAX_BYTES or conn.overflowed:
            self._lagging.discard(conn)
            self.close_laggard(conn, queued)

    def close_laggard(self, conn: Connection, queued: int) -> None:
        self.closed_for_lag += 1
        log.warning(
            "slow client closed room=%s user=%s conn=%s queued_bytes=%d pending=%d code=%d",
            conn.room,
            conn.user_id,
            conn.id,
            queued,
            conn.pending_count(),
            CloseCode.TOO_SLOW,
        )
        conn.close_soon(CloseCode.TOO_SLOW, TOO_SLOW)
        asyncio.get_running_loop().call_later(ABORT_AFTER_SECONDS, abort_socket, conn.send)
