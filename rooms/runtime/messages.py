"""What reaches a room's actor: joins, frames, leaves, calls, alarms, timer ticks and binary frames.

The ``Peer`` protocol is what the actor needs of a connection. In the embedded
mode every peer is a local :class:`~rooms.runtime.connection.Connection`; a
peer on another process (distributed mode) or a server-side publisher can
implement the same few methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rooms.runtime.actor import RoomContext


class Peer(Protocol):
    id: str
    user_id: str
    scope: str
    refused: bool

    @property
    def closed(self) -> bool: ...

    def may_send(self, required_scope: str) -> bool: ...

    async def open(self, welcome: str, seq: int, replay: list[str]) -> None: ...

    async def reply(self, text: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def error(
        self, reason: str, client_id: str | None = None, detail: str | None = None, code: str | None = None
    ) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(slots=True)
class Join:
    peer: Peer
    since: int | None


@dataclass(slots=True)
class Frame:
    peer: Peer
    type: str
    client_id: str | None
    payload: Any
    # time.perf_counter() when the frame reached this process (billing's
    # processing-time histogram); 0.0 when unknown.
    received: float = 0.0


@dataclass(slots=True)
class Leave:
    peer: Peer
    code: int
    reason: str


@dataclass(slots=True)
class Call:
    """Run ``fn`` inside the actor, between frames (admin, REST, alarms, tests)."""

    fn: Callable[[RoomContext], Awaitable[Any]]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class AlarmDue:
    """A durable alarm to run now (``dispatch.py``); crosses processes by its row."""

    alarm_id: int
    name: str
    token: int
    attempts: int
    # Unix ms it was due, for the firing-delay log line.
    due_ms: int


@dataclass(slots=True)
class Tick:
    """An in-actor timer fired (``timers.py``); never leaves the process."""

    timer: Any


@dataclass(slots=True)
class Binary:
    """A binary frame for a kind that declares ``accepts_binary`` (Yjs)."""

    peer: Peer
    data: bytes


Item = Join | Frame | Leave | Call | AlarmDue | Tick | Binary


class ServerPeer:
    """The sender of durable events a kind publishes itself (``room.publish``).

    Nobody to acknowledge or answer; its id matches no connection, so the
    event is broadcast to every socket of the room.
    """

    id = ""
    user_id = ""
    scope = "host"
    refused = False
    closed = False

    def may_send(self, required_scope: str) -> bool:
        return True

    async def open(self, welcome: str, seq: int, replay: list[str]) -> None:
        pass

    async def reply(self, text: str) -> None:
        pass

    async def send_bytes(self, data: bytes) -> None:
        pass

    async def error(
        self, reason: str, client_id: str | None = None, detail: str | None = None, code: str | None = None
    ) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        pass


SERVER_PEER = ServerPeer()
