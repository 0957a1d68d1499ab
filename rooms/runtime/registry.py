"""The process's runtime: its hub, presence, transport and live actors.

One actor per room in the process. An item for a room without an actor wakes
one; an actor that hibernates retires itself before its last await, so an item
never lands in an actor that is going away.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings

from billing.flush import stop_flusher
from presence.backends.base import PresenceBackend
from presence.backends.memory import MemoryPresence
from presence.coalesce import churning
from presence.service import PresenceService
from rooms.conf import dorm_settings
from rooms.runtime import loop_commit
from rooms.runtime.actor import RoomActor
from rooms.runtime.backpressure import OutboundWatch
from rooms.runtime.dispatch import EmbeddedScheduler, OnDemandDispatch, beat_lookahead_seconds
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
        self.outbound_watch = OutboundWatch(self.hub)
        self.presence: PresenceBackend = _presence_backend()
        # Ledger writes, beats and sweeps of this process (presence/service.py).
        self.presence_service = PresenceService(self)
        self.registry = ActorRegistry(self)
        self.shutting_down = False
        # Keepalives answered in the server's read, their consumer left
        # asleep (rooms/consumer.py, ``_answer_at_edge``), since the start.
        self.keepalives_at_edge = 0
        self.cluster: Cluster | None = None
        # Embedded mode: the alarm scheduler on this process's loop.
        self.scheduler: EmbeddedScheduler | None = None
        # Distributed mode: dispatch when an actor here sets an alarm.
        self.on_demand: OnDemandDispatch | None = None
        self.alarm_nudge: Callable[[], None] | None = None
        # The event loop the runtime serves (None when made outside one):
        # /metrics counts its tasks from a request thread.
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.transport: Transport
        if distributed:
            self.cluster = Cluster(self)
            self.transport = ClusterTransport(self.hub, self.cluster)
        else:
            self.transport = LocalTransport(self.hub)

    def start_scheduler(self) -> None:
        if self.scheduler is None:
            self.scheduler = EmbeddedScheduler(self)
            self.scheduler.start()
            self.alarm_nudge = self.scheduler.nudge

    def start_on_demand_dispatch(self) -> None:
        if self.on_demand is None:
            self.on_demand = OnDemandDispatch(self, beat_lookahead_seconds())
            self.alarm_nudge = self.on_demand.nudge

    def alarms_changed(self) -> None:
        """An actor here set an alarm or scheduled a retry: if this process
        dispatches (embedded scheduler, Celery worker), look now rather than
        at the next poll, so short delays are kept too."""
        if self.alarm_nudge is not None:
            self.alarm_nudge()

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
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.on_demand is not None:
            await self.on_demand.stop()
        actors = list(self.registry.actors.values())
        log.info("shutdown rooms=%d sockets=%d", len(actors), sum(self.hub.count(r) for r in self.hub.rooms()))
        for actor in actors:
            actor.request_stop()
        tasks = [a.task for a in actors if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        # Write the ledger and close this process's sessions with 1001, the
        # code their sockets get next.
        await self.presence_service.stop(clean=True)
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
        await loop_commit.close(asyncio.get_running_loop())
        log.info("shutdown done ms=%d", int((time.monotonic() - started) * 1000))


def event_loop_kind() -> str | None:
    """"uvloop" or "asyncio": the event loop this process's runtime runs on
    (``DORM_EVENT_LOOP`` under daphne; uvicorn's ``--loop``). None without a runtime."""
    runtime = _runtime
    loop = runtime.loop if runtime is not None else None
    if loop is None:
        return None
    return "uvloop" if type(loop).__module__.partition(".")[0] == "uvloop" else "asyncio"


def process_gauges(timeout: float = 2.0) -> dict[str, int] | None:
    """This process's live runtime, read on its event loop (callable from any
    thread): asyncio tasks, live actors, open sockets and rooms with sockets
    here, slow sockets closed with 4408 so far. None without a running runtime.

    The leak tests read these through /metrics: after connect/disconnect and
    wake/hibernate cycles they must come back to their baseline. Also the
    keepalives answered at the edge so far.
    """
    runtime = _runtime
    loop = runtime.loop if runtime is not None else None
    if runtime is None or loop is None or loop.is_closed() or not loop.is_running():
        return None

    def read() -> dict[str, int]:
        hub = runtime.hub
        rooms = hub.rooms()
        return {
            "asyncio_tasks": len(asyncio.all_tasks(loop)),
            "live_actors": len(runtime.registry.actors),
            "connections": sum(hub.count(r) for r in rooms),
            "rooms_with_connections": len(rooms),
            "slow_clients_closed": runtime.outbound_watch.closed_for_lag,
            "keepalives_at_edge": runtime.keepalives_at_edge,
            "presence_churning_connections": churning.total(time.monotonic()),
            "commits_on_loop": loop_commit.commits_on_loop(loop),
        }

    try:
        on_loop = asyncio.get_running_loop() is loop
    except RuntimeError:
        on_loop = False
    if on_loop:
        return read()
    result: concurrent.futures.Future[dict[str, int]] = concurrent.futures.Future()

    def run() -> None:
        try:
            result.set_result(read())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result.set_exception(exc)

    try:
        loop.call_soon_threadsafe(run)
        return result.result(timeout)
    except (concurrent.futures.TimeoutError, RuntimeError):
        return None


def _presence_backend() -> PresenceBackend:
    from rooms.conf import dorm_settings

    url = str(dorm_settings.PRESENCE_REDIS_URL or "")
    if url:
        from presence.backends.redis import RedisPresence

        return RedisPresence(url)
    return MemoryPresence()


_runtime: Runtime | None = None


def alarm_scheduler_mode() -> str:
    """"embedded", "celery" or "off" (``DORM["ALARM_SCHEDULER"]``, "auto" resolved)."""
    mode = str(dorm_settings.ALARM_SCHEDULER)
    if mode == "auto":
        return "celery" if getattr(settings, "REDIS_URL", "") else "embedded"
    return mode


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(distributed=bool(getattr(settings, "REDIS_URL", "")))
        install_graceful_shutdown(_runtime)
        mode = alarm_scheduler_mode()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop (a management command): no scheduler
        else:
            if mode == "embedded":
                _runtime.start_scheduler()
            elif mode == "celery":
                _runtime.start_on_demand_dispatch()
    return _runtime


async def reset_runtime() -> None:
    """Stop every actor and start afresh (tests: one runtime per event loop)."""
    global _runtime
    if _runtime is not None:
        task = _runtime.outbound_watch.task
        if task is not None:
            task.cancel()
        if _runtime.scheduler is not None:
            await _runtime.scheduler.stop()
        if _runtime.on_demand is not None:
            await _runtime.on_demand.stop()
        await _runtime.registry.stop_all()
        await _runtime.presence_service.stop(clean=False)
        await _runtime.presence.close()
        if _runtime.cluster is not None:
            await _runtime.cluster.stop()
    _runtime = None
    # Tests roll the database back without any post_save/post_delete: the
    # access cache must not outlive the rows it was read from.
    from rooms.access import cache

    cache.invalidate()
