"""Delivering due alarms to their rooms' actors: one dispatch function, two drivers.

``Dispatcher.dispatch()`` claims the alarms due within a short look-ahead
(a conditional ``UPDATE`` per row sets ``claimed_until``, so two dispatchers
never both deliver one setting) and submits an :class:`AlarmDue` to the
room's actor at its due time, through the process's registry: a local actor
takes it at once, a sleeping room wakes, and in the distributed mode the
cluster forwards it to the owner's inbox or takes the lease and hosts the
actor here. The look-ahead is what makes firing precise although the
drivers only poll: an alarm due between two polls is already waiting on the
event loop when its time comes, and its room has been woken meanwhile (the
pre-wake), so even a burst of cold rooms fires close to its time.

- Embedded mode: :class:`EmbeddedScheduler`, a task on the server's event
  loop polling every ``ALARM_POLL_SECONDS`` (and at once when an actor sets
  an alarm).
- Distributed mode: Celery beat runs ``rooms.tasks.dispatch_alarms`` every
  second; the worker calls the same ``dispatch()`` on its own runtime
  (``worker_host.py``). Every process also runs :class:`OnDemandDispatch`
  when one of its actors sets an alarm or schedules a retry.

At least once: a delivery lost with its process (killed worker, dead owner)
leaves the row claimed until ``claimed_until``, after which the next poll
delivers it again. The actor re-checks the row before running it, so a
duplicate of a delivery that did run is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.db import transaction
from django.db.models import Min, Q
from django.utils import timezone

from rooms.conf import dorm_settings
from rooms.models import Alarm
from rooms.runtime.alarms import due_filter
from rooms.runtime.messages import AlarmDue, Call

if TYPE_CHECKING:
    from rooms.runtime.registry import Runtime

log = logging.getLogger("dorm.alarms")

# Alarms due further ahead than this get their room woken at claim time.
PREWAKE_MIN_SECONDS = 0.05
# Rooms woken at once ahead of their alarms. Bounded: each cold wake takes
# database work and, distributed, a lease claim on Redis; 200 at once
# exhausted the Redis connection pool (MaxConnectionsError) and queued
# behind each other past their due time.
PREWAKE_CONCURRENCY = 16
# How long a pre-wake waits for its room's actor before moving on.
PREWAKE_TIMEOUT_SECONDS = 10.0


# A room woken ahead of its alarm stays awake this long past the due time.
PREWAKE_GRACE_SECONDS = 1.0


def _stay_awake_until(at: datetime) -> Any:
    async def awake(context: Any) -> None:
        context.stay_awake((at - timezone.now()).total_seconds() + PREWAKE_GRACE_SECONDS)

    return awake


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

# Most alarms one poll claims; the rest wait for the next poll.
CLAIM_BATCH = 500
# The embedded scheduler claims alarms this far ahead (it polls every
# ALARM_POLL_SECONDS): time to wake their rooms before they are due.
LOOKAHEAD_SECONDS = 1.5
# Beat's dispatcher claims alarms this many beat periods ahead: each alarm is
# claimed 1.5 to 2.5 periods before its time, enough to wake a burst of rooms
# (measured: 200 rooms due at one instant, see docs/alarms.md).
BEAT_LOOKAHEAD_PERIODS = 2.5


def beat_lookahead_seconds() -> float:
    from django.conf import settings

    return float(getattr(settings, "ALARM_BEAT_SECONDS", 1.0)) * BEAT_LOOKAHEAD_PERIODS


@dataclass(frozen=True, slots=True)
class Claimed:
    alarm_id: int
    room: str
    name: str
    token: int
    attempts: int
    at: datetime

    def item(self) -> AlarmDue:
        return AlarmDue(self.alarm_id, self.name, self.token, self.attempts, int(self.at.timestamp() * 1000))


def claim_due(lookahead_seconds: float, now: datetime | None = None) -> list[Claimed]:
    """Claim the alarms due within ``lookahead_seconds`` (database thread)."""
    now = now or timezone.now()
    horizon = now + timedelta(seconds=lookahead_seconds)
    hold = timedelta(seconds=float(dorm_settings.ALARM_CLAIM_SECONDS))
    rows = list(
        Alarm.objects.filter(due_filter(now, horizon))
        .order_by("next_attempt_at")
        .values_list("id", "room__slug", "name", "token", "attempts", "next_attempt_at", "claimed_until")[
            :CLAIM_BATCH
        ]
    )
    if not rows:
        return []
    claimed: list[Claimed] = []
    with transaction.atomic():
        for alarm_id, room, name, token, attempts, at, held_until in rows:
            # Compare-and-set on what was read: another dispatcher that
            # claimed it meanwhile changed claimed_until.
            held = Q(claimed_until__isnull=True) if held_until is None else Q(claimed_until=held_until)
            won = (
                Alarm.objects.filter(held, pk=alarm_id, token=token, attempts=attempts, status=Alarm.SCHEDULED)
                .update(claimed_until=max(at, now) + hold)
            )
            if won:
                claimed.append(Claimed(alarm_id, room, name, token, attempts, at))
    return claimed


def release_claims(claims: list[Claimed]) -> int:
    """Give back claims whose delivery will not happen here (a clean stop)."""
    released = 0
    for c in claims:
        released += Alarm.objects.filter(
            pk=c.alarm_id, token=c.token, attempts=c.attempts, status=Alarm.SCHEDULED
        ).update(claimed_until=None)
    return released


def next_due_at() -> datetime | None:
    """When the earliest scheduled alarm becomes claimable (due, or its claim runs out)."""
    scheduled = Alarm.objects.filter(status=Alarm.SCHEDULED)
    due = scheduled.filter(claimed_until__isnull=True).aggregate(m=Min("next_attempt_at"))["m"]
    held = scheduled.filter(claimed_until__isnull=False).aggregate(m=Min("claimed_until"))["m"]
    return min((t for t in (due, held) if t is not None), default=None)


db_claim_due = database_sync_to_async(claim_due)
db_next_due_at = database_sync_to_async(next_due_at)
db_release_claims = database_sync_to_async(release_claims)


class Dispatcher:
    """Claims due alarms and hands them to the runtime's actors on time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._pending: dict[asyncio.TimerHandle, Claimed] = {}
        self._prewakes: set[asyncio.Task[None]] = set()
        self._prewake_slots = asyncio.Semaphore(PREWAKE_CONCURRENCY)

    async def dispatch(self, lookahead_seconds: float) -> int:
        claimed = await db_claim_due(lookahead_seconds)
        loop = asyncio.get_running_loop()
        now = timezone.now()
        for c in claimed:
            delay = (c.at - now).total_seconds()
            if delay <= 0:
                self._deliver(c, None)
            else:
                if delay > PREWAKE_MIN_SECONDS:
                    task = loop.create_task(self._prewake(c.room, c.at))
                    self._prewakes.add(task)
                    task.add_done_callback(self._prewakes.discard)
                holder: list[asyncio.TimerHandle] = []
                handle = loop.call_later(delay, self._deliver, c, holder)
                holder.append(handle)
                self._pending[handle] = c
        return len(claimed)

    async def _prewake(self, room: str, at: datetime) -> None:
        """Wake the room's actor now, so the alarm runs at its time without
        paying for the wake (load, snapshot, log tail) then: a burst of alarms
        due at one instant would otherwise queue behind each other's wakes.
        A room another process owns is already awake there (the call fails
        with RemoteRoom, which is fine)."""
        async with self._prewake_slots:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_consume)
            self.runtime.registry.submit(room, Call(_stay_awake_until(at), future))
            try:
                await asyncio.wait_for(asyncio.shield(future), PREWAKE_TIMEOUT_SECONDS)
            except (Exception, asyncio.TimeoutError):
                pass  # the alarm's own delivery wakes it (or retries)

    def _deliver(self, c: Claimed, holder: list[asyncio.TimerHandle] | None) -> None:
        if holder:
            self._pending.pop(holder[0], None)
        log.debug("alarm deliver room=%s name=%s attempt=%d", c.room, c.name, c.attempts + 1)
        self.runtime.registry.submit(c.room, c.item())

    async def stop(self) -> None:
        """Drop deliveries not yet due and give their claims back, so the next
        dispatcher (after a restart or on another process) delivers them on
        time. If that fails, the claims run out and they are delivered late."""
        pending, self._pending = self._pending, {}
        for handle in pending:
            handle.cancel()
        for task in list(self._prewakes):
            task.cancel()
        if pending:
            try:
                await db_release_claims(list(pending.values()))
            except Exception as exc:
                log.warning("alarm claims not released count=%d error=%s", len(pending), type(exc).__name__)


class EmbeddedScheduler:
    """The embedded mode's beat: a task on the server's loop, no broker."""

    def __init__(self, runtime: Runtime) -> None:
        self.dispatcher = Dispatcher(runtime)
        self._nudge = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dorm-alarm-scheduler")
            log.info("alarm scheduler up mode=embedded poll_ms=%d", int(self.poll_seconds * 1000))

    @property
    def poll_seconds(self) -> float:
        return float(dorm_settings.ALARM_POLL_SECONDS)

    def nudge(self) -> None:
        """An alarm was set here: poll now rather than at the next tick."""
        self._nudge.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            self._nudge.clear()
            try:
                # Look ahead several polls: every alarm is on the loop, and
                # its room awake, before its time.
                await self.dispatcher.dispatch(LOOKAHEAD_SECONDS)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("alarm dispatch failed failures=%d error=%s", failures, type(exc).__name__)
            wait = await self._wait_seconds()  # before the wait() coroutine exists: a cancel here leaks none
            try:
                await asyncio.wait_for(self._nudge.wait(), wait)
            except TimeoutError:
                pass

    async def _wait_seconds(self) -> float:
        """The poll period, or longer while no alarm is due soon (ALARM_IDLE_POLL_SECONDS)."""
        poll = self.poll_seconds
        idle = dorm_settings.ALARM_IDLE_POLL_SECONDS
        if idle is None or idle <= poll or self._nudge.is_set():
            return poll
        try:
            at = await db_next_due_at()
        except asyncio.CancelledError:
            raise
        except Exception:
            return poll
        if at is None:
            return float(idle)
        # Wake so that the dispatch claims it with its usual look-ahead.
        until = (at - timezone.now()).total_seconds() - LOOKAHEAD_SECONDS + poll
        return min(float(idle), max(poll, until))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        await self.dispatcher.stop()


class OnDemandDispatch:
    """Dispatch at once when an actor of this process sets an alarm or
    schedules a retry (distributed mode: ASGI servers and the worker).

    Beat finds every alarm within a second anyway; this keeps short delays
    short (an alarm set 0.3 s ahead, a retry after 0.5 s) where beat alone
    would round them up to its next tick. No polling: it runs only when
    nudged, and the claims keep it from racing beat's dispatcher.
    """

    def __init__(self, runtime: Runtime, lookahead_seconds: float) -> None:
        self.dispatcher = Dispatcher(runtime)
        self.lookahead_seconds = lookahead_seconds
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def nudge(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True  # a commit during a dispatch: look once more
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dorm-alarm-nudge")

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.dispatcher.dispatch(self.lookahead_seconds)
            except Exception as exc:
                log.warning("alarm dispatch failed error=%s", type(exc).__name__)
            if not self._again:
                return

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.dispatcher.stop()
