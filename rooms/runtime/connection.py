"""One client socket in this process, as the actor and the fan-out see it.

A connection is in its room's fan-out set from the moment its handshake
completes, but nothing is written to it before its ``welcome``: events and
replies (a pong, an error) that come first wait in ``pending`` and are
flushed after the welcome (and the resume replay), dropping the events the
welcome's seq already covers. So the first
frame is always ``welcome`` and no event ordered after the handshake is lost.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

from billing.meter import meter
from rooms.conf import dorm_settings
from rooms.runtime.direct_write import QUEUED, FrameWriter, close_socket, direct_writer, outbound_meter, text_frame
from rooms.protocol import CloseCode, ErrorReason, close_frame, error_frame

if TYPE_CHECKING:
    from rooms.runtime.hub import LocalHub

log = logging.getLogger("dorm.rooms")

# close_soon's tasks, until they are done.
_closing: set[asyncio.Future[None]] = set()

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

# "server" is never a token's scope: only server-side publishes (REST, see
# publish.py) hold it, for messages such as `restore`.
SCOPE_RANK = {"read": 0, "write": 1, "host": 2, "server": 3}

# Replies that are the client's fault count towards the abuse limit.
ABUSE_REASONS = frozenset(
    {
        ErrorReason.INVALID_JSON,
        ErrorReason.INVALID_MESSAGE,
        ErrorReason.UNKNOWN_TYPE,
        ErrorReason.TOO_LARGE,
        ErrorReason.FORBIDDEN,
    }
)


class ConnectionState(Enum):
    PENDING = "pending"  # handshake done, welcome not yet sent
    OPEN = "open"
    CLOSED = "closed"


class Connection:
    """A local peer: the actor replies to it, the hub writes events to it."""

    __slots__ = (
        "id",
        "room",
        "user_id",
        "scope",
        "state",
        "send",
        "_pending",
        "_invalid_at",
        "refused",
        "close_code",
        "close_reason",
        "write_frame",
        "binary",
        "_outbound",
        "lagging",
        "overflowed",
        "hub",
    )

    def __init__(self, room: str, user_id: str, scope: str, send: ASGISend) -> None:
        self.id = secrets.token_urlsafe(9)
        self.room = room
        self.user_id = user_id
        self.scope = scope
        self.state = ConnectionState.PENDING
        self.send = send
        # Direct frame writes for fan-out where the server allows (direct_write.py).
        self.write_frame: FrameWriter | None = direct_writer(send) if dorm_settings.DIRECT_SOCKET_WRITES else None
        # Backpressure (backpressure.py): bytes queued in the server for this
        # socket; lagging = skip ephemeral events; overflowed = close it.
        self._outbound = outbound_meter(send)
        self.lagging = False
        self.overflowed = False
        # Events held until the welcome, and times of recent invalid frames:
        # made on first use and dropped when empty (an idle socket holds
        # neither; two deques were ~1.5 KiB of every connection).
        self._pending: deque[tuple[int | None, dict[str, Any]]] | None = None
        self._invalid_at: deque[float] | None = None
        # Set when the room refused the join (no leave is owed to the actor).
        self.refused = False
        # Set when the server closed the socket (the ledger records why).
        self.close_code: int | None = None
        self.close_reason = ""
        # A socket of a binary kind (Yjs): it gets binary frames only, never
        # Dorm's JSON frames, which its client could not parse.
        self.binary = False
        # The hub this socket is in (set by LocalHub.add): writes that may
        # leave bytes queued mark this socket for the backpressure watch.
        self.hub: LocalHub | None = None

    def _written(self) -> None:
        hub = self.hub
        if hub is not None:
            hub.mark(self)

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    def buffer(self, seq: int | None, message: dict[str, Any]) -> None:
        """Hold an event that arrived before the welcome (bounded)."""
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        elif len(pending) >= dorm_settings.PENDING_MAX_FRAMES:
            if not self.overflowed:
                self.overflowed = True  # the backpressure watch closes it
                self._written()
            return
        pending.append((seq, message))

    def pending_count(self) -> int:
        pending = self._pending
        return 0 if pending is None else len(pending)

    def outbound_bytes(self) -> int:
        outbound = self._outbound
        if outbound is None:
            return 0
        try:
            return outbound()
        except Exception:  # a transport already torn down
            return 0

    async def open(self, welcome: str, seq: int, replay: list[str]) -> None:
        """Send the welcome, the resume replay, then what arrived meanwhile."""
        if self.state is not ConnectionState.PENDING:
            return
        send = self.send
        try:
            if not self.binary:
                await send({"type": "websocket.send", "text": welcome})
                for text in replay:
                    await send({"type": "websocket.send", "text": text})
            pending = self._pending
            while pending:
                event_seq, message = pending.popleft()
                if event_seq is None or event_seq > seq:
                    await send(message)
            self._pending = None
        except Exception:
            self.lost()
            return
        self._written()
        if self.state is ConnectionState.PENDING:
            self.state = ConnectionState.OPEN

    async def send_bytes(self, data: bytes) -> None:
        """A binary frame (binary kinds); held like events until the welcome."""
        message = {"type": "websocket.send", "bytes": data}
        if self.state is ConnectionState.PENDING:
            if self._pending is None:
                self._pending = deque()
            self._pending.append((None, message))
        elif self.state is ConnectionState.OPEN:
            try:
                await self.send(message)
            except Exception:
                self.lost()
                return
            self._written()

    def reply_now(self, text: str) -> bool:
        """Write a reply straight to the open socket, in this call; False
        where only ``reply`` can send it (not open, no direct writes).

        Framed here and written as the fan-out writes (one ack per durable
        event: autobahn's path cost ~10 us). Same transport, written
        synchronously: order with the ASGI ``send`` path is kept.
        """
        write = self.write_frame
        if write is None or self.state is not ConnectionState.OPEN:
            return False
        written = write(text_frame(text))
        if written is QUEUED:
            self._written()
        return bool(written)

    async def reply(self, text: str) -> None:
        if self.binary:
            return  # JSON replies (acks, errors, pong) mean nothing to a binary client
        if self.state is ConnectionState.PENDING:
            # The first frame a connection receives is its welcome: a reply
            # to a frame sent before it (a ping right behind the handshake)
            # waits with the events, in order.
            self.buffer(None, {"type": "websocket.send", "text": text})
            return
        if self.reply_now(text):
            return
        if self.state is not ConnectionState.CLOSED:
            try:
                await self.send({"type": "websocket.send", "text": text})
            except Exception:
                self.lost()
                return
            self._written()

    def lost(self) -> None:
        """The socket went away under a send; its disconnect event follows."""
        self.state = ConnectionState.CLOSED
        self._pending = None

    async def error(
        self, reason: str, client_id: str | None = None, detail: str | None = None, code: str | None = None
    ) -> None:
        """Reply with an error frame; repeated client faults close with 1008."""
        await self.reply(error_frame(reason, client_id, detail, code))
        meter.op("error", reason)
        # A coded refusal is the room's state saying no (a lost race), not abuse.
        if reason in ABUSE_REASONS and code is None:
            now = time.monotonic()
            marks = self._invalid_at
            if marks is None:
                marks = self._invalid_at = deque()
            marks.append(now)
            window = dorm_settings.ABUSE_WINDOW_SECONDS
            while marks and now - marks[0] > window:
                marks.popleft()
            if len(marks) > dorm_settings.ABUSE_MAX_INVALID_FRAMES:
                await self.close(CloseCode.POLICY_VIOLATION, "too many invalid frames")

    async def close(self, code: int, reason: str) -> None:
        """Close with a last `close` frame first (some servers drop the reason)."""
        if self._begin_close(code, reason):
            await self._send_close(code, reason)

    def close_soon(self, code: int, reason: str) -> None:
        """``close`` from code that cannot await: nothing more is written to
        the socket from this call on, and the close frames follow in a task.

        The decision must hold at once: a bus reader that finds a gap closes
        the room's sockets and goes on reading, and an event read next must
        not reach a socket that is only about to close (its client would see
        a hole in a run it takes as gapless)."""
        if self._begin_close(code, reason):
            task = asyncio.ensure_future(self._send_close(code, reason))
            _closing.add(task)  # referenced until done (a bare task may be collected)
            task.add_done_callback(_closing.discard)

    def _begin_close(self, code: int, reason: str) -> bool:
        if self.state is ConnectionState.CLOSED:
            return False
        self.state = ConnectionState.CLOSED
        self.close_code = int(code)
        self.close_reason = reason
        self._pending = None
        log.info("close room=%s user=%s conn=%s code=%d reason=%s", self.room, self.user_id, self.id, code, reason)
        return True

    async def _send_close(self, code: int, reason: str) -> None:
        try:
            if not self.binary:
                await self.send({"type": "websocket.send", "text": close_frame(code, reason)})
            await close_socket(self.send, code, reason)
        except Exception:  # the socket may already be gone; closing is best effort
            log.debug("close on a dead socket room=%s conn=%s", self.room, self.id)

    def may_send(self, required_scope: str) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK[required_scope]
