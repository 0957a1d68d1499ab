"""The process's runtime: its hub, presence, transport and live actors.

One actor per room in the process. An item for a room without an actor wakes
one; an actor that hibernates retires itself before its last await, so an item
never lands in an actor that is going away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from django.conf import settings

from billing.flush import stop_flusher
from presence.backends.base import PresenceBackend
from presence.backends.memory import MemoryPresence
from rooms.runtime.actor import RoomActor
from rooms.runtime.hub import LocalHub
from rooms.runtime.messages import Call, Item, Leave
from rooms.protocol import CloseCode
from rooms.runtime.cluster import Cluster
from rooms.runtime.shutdown import install_graceful_shutdown
from rooms.runtime.transport import ClusterTransport, LocalTransport, Transport

log = logging.getLogger("dorm.rooms")


class ActorRegistry:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.actors: dict[str, RoomActor] = {}
        # The last task of each room's previous actor, so a new actor waits
        # for its predecessor's sleep bookkeeping.
        self._last_task: dict[str, asyncio.Task[None]] = {}

    def submit(self, room: str, item: Item) -> None:
        actor = self.actors.get(room)
        cluster = self.runtime.cluster
        if actor is not None:
            if cluster is None or room not in cluster.routes:
                actor.submit(item)
                return
        if cluster is not None:
            # Distributed: the room may run elsewhere, or need its lease first.
            cluster.route(self, room, item)
            return
        if actor is None and self.runtime.shutting_down and type(item) is Leave:
            # A socket closed by the shutdown itself: waking the room again
            # would start an actor (and an ActorRun that never ends) in a
            # process about to exit. Its next owner starts without it.
            return
        self.wake(room).submit(item)

    def previous_task(self, room: str) -> asyncio.Task[None] | None:
        """The room's last local actor, if it has not finished yet."""
        task = self._last_task.get(room)
        return None if task is None or task.done() else task

    def wake(self, room: str) -> RoomActor:
        actor = RoomActor(room, self.runtime)
        self.actors[room] = actor
        previous = self._last_task.get(room)
        if previous is not None and previous.done():
            previous = None
        task = asyncio.get_running_loop().create_task(actor.run(previous), name=f"room:{room}")
        actor.task = task
        self._last_task[room] = task
        task.add_done_callback(lambda t, room=room: self._forget_task(room, t))
        return actor

    def _forget_task(self, room: str, task: asyncio.Task[None]) -> None:
        if self._last_task.get(room) is task:
            del self._last_task[room]
        if not task.cancelled() and task.exception() is not None:
            log.error("actor task failed room=%s", room, exc_info=task.exception())

    def retire(self, actor: RoomActor) -> None:
        if self.actors.get(actor.slug) is actor:
            del self.actors[actor.slug]

    async def call(self, room: str, fn: Any) -> Any:
        """Run ``fn(context)`` inside the room's actor and return its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.submit(room, Call(fn, future))
        return await future

    async def stop_all(self) -> None:
        tasks = [a.task for a in self.actors.values() if a.task is not None] + list(self._last_task.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class Runtime:
    """Everything one process needs to host rooms.

    Embedded mode: every room runs here. Distributed mode (``REDIS_URL``):
    ``cluster`` decides where a room runs and carries frames and events
    between processes (``cluster.py``).
    """

    def __init__(self, distributed: bool = False) -> None:
        self.hub = LocalHub()
        self.presence: PresenceBackend = MemoryPresence()
        self.registry = ActorRegistry(self)
        self.shutting_down = False
        self.cluster: Cluster | None = None
        self.transport: Transport
        if distributed:
            self.cluster = Cluster(self)
            self.transport = ClusterTransport(self.hub, self.cluster)
        else:
            self.transport = LocalTransport(self.hub)

    async def actor_stopped(self, room: str, clean: bool) -> None:
        if self.cluster is not None:
            await self.cluster.actor_stopped(room, clean)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Graceful stop: refuse new sockets, hand rooms over, close sockets with 1001.

        Each actor finishes what is queued, commits, snapshots and (distributed)
        releases its lease after telling the other processes; then the local
        sockets close with 1001 so their clients resume with ``since``
        wherever the load balancer sends them.
        """
        if self.shutting_down:
            return
        self.shutting_down = True
        started = time.monotonic()
        actors = list(self.registry.actors.values())
        log.info("shutdown rooms=%d sockets=%d", len(actors), sum(self.hub.count(r) for r in self.hub.rooms()))
        for actor in actors:
            actor.request_stop()
        tasks = [a.task for a in actors if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        closing = [
            conn.close(CloseCode.GOING_AWAY, "server shutting down, reconnect with since")
            for room in self.hub.rooms()
            for conn in self.hub.connections(room)
        ]
        await asyncio.gather(*closing, return_exceptions=True)
        if self.cluster is not None:
            await self.cluster.bus.flushed()
        # Billing: write this process's last counters before it exits.
        await stop_flusher()
        log.info("shutdown done ms=%d", int((time.monotonic() - started) * 1000))


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(distributed=bool(getattr(settings, "REDIS_URL", "")))
        install_graceful_shutdown(_runtime)
    return _runtime


async def reset_runtime() -> None:
    """Stop every actor and start afresh (tests: one runtime per event loop)."""
    global _runtime
    if _runtime is not None:
        await _runtime.registry.stop_all()
        if _runtime.cluster is not None:
            await _runtime.cluster.stop()
    _runtime = None
