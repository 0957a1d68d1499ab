"""The sockets of each room connected to this process, and fan-out to them.

Fan-out is the hot path: one event is serialized once (by the actor), framed
once, and written to every local socket of the room in one loop, with no
channel-layer hop, no task and no allocation per recipient (see
``direct_write.py``; sockets of other servers get the same ASGI message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from billing.meter import meter
from rooms.runtime.connection import Connection, ConnectionState
from rooms.runtime.direct_write import QUEUED, text_frame

_OPEN = ConnectionState.OPEN
_PENDING = ConnectionState.PENDING


class LocalHub:
    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, Connection]] = {}
        # A tuple per room, rebuilt on join/leave, so that fan-out iterates a
        # stable sequence even if a send yields and the set changes meanwhile.
        self._members: dict[str, tuple[Connection, ...]] = {}
        # Sockets that may have bytes queued since the backpressure watch last
        # looked (written through the ASGI send, or a direct write the socket
        # did not take at once), and how to wake it (backpressure.py).
        self.written: set[Connection] = set()
        self.on_write: Callable[[], None] = _nothing

    def mark(self, conn: Connection) -> None:
        """Bytes may wait in ``conn``'s transport: the watch looks at it next."""
        written = self.written
        if conn not in written:
            written.add(conn)
            self.on_write()

    def add(self, conn: Connection) -> None:
        conn.hub = self
        conns = self._rooms.setdefault(conn.room, {})
        conns[conn.id] = conn
        self._members[conn.room] = tuple(conns.values())

    def remove(self, conn: Connection) -> None:
        conns = self._rooms.get(conn.room)
        if conns is None or conns.pop(conn.id, None) is None:
            return
        if conns:
            self._members[conn.room] = tuple(conns.values())
        else:
            del self._rooms[conn.room]
            del self._members[conn.room]

    def get(self, room: str, connection_id: str) -> Connection | None:
        return self._rooms.get(room, {}).get(connection_id)

    def connections(self, room: str) -> tuple[Connection, ...]:
        return self._members.get(room, ())

    def count(self, room: str) -> int:
        return len(self._members.get(room, ()))

    def rooms(self) -> list[str]:
        return list(self._rooms)

    async def deliver_bytes(self, room: str, data: bytes, exclude: str | None) -> int:
        """A binary frame to the room's binary sockets but ``exclude`` (binary kinds)."""
        delivered = 0
        for conn in self._members.get(room, ()):
            if conn.binary and conn.id != exclude and conn.state is not ConnectionState.CLOSED:
                await conn.send_bytes(data)  # marks it for the watch
                delivered += 1
        return delivered

    async def deliver(self, room: str, text: str, seq: int | None, exclude: str | None) -> int:
        """Write one event to the room's local sockets but ``exclude``; returns deliveries."""
        delivered, slow = self.deliver_now(room, text, seq, exclude)
        if slow:
            delivered += await self.deliver_slow(room, slow, text)
        return delivered

    def deliver_now(
        self, room: str, text: str, seq: int | None, exclude: str | None
    ) -> tuple[int, list[Connection]]:
        """The synchronous part of ``deliver``: direct writes and buffering.

        Returns the deliveries made and the open sockets that need the ASGI
        ``send`` (no direct writer): ``deliver_slow`` writes those. The room
        bus calls this straight from its reader, with no task per event.
        """
        members = self._members.get(room)
        if not members:
            return 0, []
        frame: bytes | None = None  # framed once, on first use
        delivered = 0
        slow: list[Connection] = []
        for conn in members:
            if conn.id == exclude or conn.binary:
                continue
            state = conn.state
            if state is _OPEN:
                if seq is None and conn.lagging:
                    continue  # a lagging client gets durable events first
                write = conn.write_frame
                if write is not None:
                    if frame is None:
                        frame = text_frame(text)
                    written = write(frame)
                    if written:
                        delivered += 1
                        if written is QUEUED:
                            self.mark(conn)
                        continue
                slow.append(conn)
            elif state is _PENDING:
                conn.buffer(seq, {"type": "websocket.send", "text": text})
        if delivered:
            # Metered once per event, not per socket.
            meter.delivered(room, delivered, _size(text))
        return delivered, slow

    async def deliver_slow(self, room: str, conns: list[Connection], text: str) -> int:
        message: dict[str, Any] = {"type": "websocket.send", "text": text}
        delivered = 0
        for conn in conns:
            try:
                await conn.send(message)
            except Exception:
                # The socket closed under us (uvicorn raises, daphne
                # ignores): one dead socket never stops a broadcast.
                conn.lost()
                continue
            delivered += 1
            self.mark(conn)
        if delivered:
            meter.delivered(room, delivered, _size(text))
        return delivered


def _nothing() -> None:
    pass


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())
