"""The process's runtime: its hub, presence, transport and live actors.

One actor per room in the process. An item for a room without an actor wakes
one; an actor that hibernates retires itself before its last await, so an item
never lands in an actor that is going away.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from presence.backends.base import PresenceBackend
from presence.backends.memory import MemoryPresence
from rooms.runtime.actor import RoomActor
from rooms.runtime.hub import LocalHub
from rooms.runtime.messages import Call, Item
from rooms.runtime.transport import LocalTransport, Transport

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
        if actor is None:
            actor = self._wake(room)
        actor.submit(item)

    def _wake(self, room: str) -> RoomActor:
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
    """Everything one process needs to host rooms (embedded mode)."""

    def __init__(self) -> None:
        self.hub = LocalHub()
        self.presence: PresenceBackend = MemoryPresence()
        self.transport: Transport = LocalTransport(self.hub)
        self.registry = ActorRegistry(self)


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime


async def reset_runtime() -> None:
    """Stop every actor and start afresh (tests: one runtime per event loop)."""
    global _runtime
    if _runtime is not None:
        await _runtime.registry.stop_all()
    _runtime = None
