"""How an actor's events reach the room's sockets.

Embedded mode: the actor and every socket share the process, so a broadcast is
a direct call into the local hub. The distributed mode will publish once per
event per room and let each process's hub write to its own sockets, behind
this same method.
"""

from __future__ import annotations

from typing import Protocol

from rooms.runtime.hub import LocalHub


class Transport(Protocol):
    async def broadcast(self, room: str, text: str, seq: int | None, exclude: str | None) -> None: ...


class LocalTransport:
    def __init__(self, hub: LocalHub) -> None:
        self.hub = hub

    async def broadcast(self, room: str, text: str, seq: int | None, exclude: str | None) -> None:
        await self.hub.deliver(room, text, seq, exclude)
