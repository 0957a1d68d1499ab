"""How an actor's events reach the room's sockets.

Embedded mode: the actor and every socket share the process, so a broadcast is
a direct call into the local hub. The distributed mode also publishes
once per event per room on the room bus, and each other process's hub writes
it to its own sockets (``cluster.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from rooms.runtime.hub import LocalHub

if TYPE_CHECKING:
    from rooms.runtime.cluster import Cluster


class Transport(Protocol):
    async def broadcast(self, room: str, text: str, seq: int | None, exclude: str | None) -> None: ...

    async def broadcast_bytes(self, room: str, data: bytes, exclude: str | None) -> None: ...


class LocalTransport:
    def __init__(self, hub: LocalHub) -> None:
        self.hub = hub

    async def broadcast(self, room: str, text: str, seq: int | None, exclude: str | None) -> None:
        await self.hub.deliver(room, text, seq, exclude)

    async def broadcast_bytes(self, room: str, data: bytes, exclude: str | None) -> None:
        await self.hub.deliver_bytes(room, data, exclude)


class ClusterTransport:
    def __init__(self, hub: LocalHub, cluster: Cluster) -> None:
        self.hub = hub
        self.cluster = cluster

    async def broadcast(self, room: str, text: str, seq: int | None, exclude: str | None) -> None:
        # Queue the publish first: the bus writer sends it while the local
        # fan-out runs.
        self.cluster.publish_event(room, text, seq, exclude)
        await self.hub.deliver(room, text, seq, exclude)

    async def broadcast_bytes(self, room: str, data: bytes, exclude: str | None) -> None:
        self.cluster.publish_bytes(room, data, exclude)
        await self.hub.deliver_bytes(room, data, exclude)
