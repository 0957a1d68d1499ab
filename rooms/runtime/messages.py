"""What reaches a room's actor: joins, frames, leaves, and calls.

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

    async def error(self, reason: str, client_id: str | None = None, detail: str | None = None) -> None: ...

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


Item = Join | Frame | Leave | Call
