"""In-actor timers: ``room.after(0.5, fn)`` and ``room.every(0.25, fn)``.

For sub-second work while a room is awake: flushing a buffer, a debounced
broadcast, a 20-60 Hz game tick. A timer does not call ``fn`` from the event
loop's callback: it queues a :class:`~rooms.runtime.messages.Tick` in the
actor's inbox, so ``fn`` runs between frames like everything else in the room
(one writer, no locks) and what it stages commits with the group commit.

Timers live in memory only. They stop when the room hibernates (and are gone
after a restart), and their ticks do not count as activity, so a room with
only a timer running still falls asleep after ``HIBERNATE_AFTER_SECONDS``.
Anything that must survive sleep uses a durable alarm.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rooms.runtime.messages import Tick

if TYPE_CHECKING:
    from rooms.runtime.actor import RoomContext

TimerFn = Callable[["RoomContext"], Awaitable[Any] | Any]

# The fastest `every` accepted: 120 Hz is already more than a game tick needs.
MIN_INTERVAL_SECONDS = 1 / 120


class Timer:
    __slots__ = ("fn", "interval", "when", "cancelled", "_handle", "_timers")

    def __init__(self, timers: Timers, fn: TimerFn, when: float, interval: float | None) -> None:
        self._timers = timers
        self.fn = fn
        self.interval = interval
        self.when = when  # loop time of the next tick
        self.cancelled = False
        self._handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._timers.active.discard(self)


class Timers:
    """The timers of one actor; ``submit`` is the actor's inbox."""

    def __init__(self, submit: Callable[[Tick], None]) -> None:
        # Weakly: the actor holds its timers, so its bound ``submit`` here
        # made a reference cycle, and a sleeping room's objects waited for
        # the cyclic collector instead of going at once.
        self._submit = weakref.WeakMethod(submit) if inspect.ismethod(submit) else (lambda: submit)
        self.active: set[Timer] = set()

    def after(self, seconds: float, fn: TimerFn) -> Timer:
        if not seconds >= 0:
            raise ValueError("after: seconds must be >= 0")
        return self._arm(Timer(self, fn, asyncio.get_running_loop().time() + seconds, None))

    def every(self, seconds: float, fn: TimerFn) -> Timer:
        if not seconds >= MIN_INTERVAL_SECONDS:
            raise ValueError(f"every: seconds must be >= {MIN_INTERVAL_SECONDS:.4f}")
        return self._arm(Timer(self, fn, asyncio.get_running_loop().time() + seconds, seconds))

    def _arm(self, timer: Timer) -> Timer:
        self.active.add(timer)
        timer._handle = asyncio.get_running_loop().call_at(timer.when, self._tick, Tick(timer))
        return timer

    def _tick(self, tick: Tick) -> None:
        submit = self._submit()
        if submit is not None:  # None: the actor is gone (its timers stop when it sleeps)
            submit(tick)

    def due(self, timer: Timer) -> bool:
        """The actor took a tick: True if ``fn`` should run (re-arms ``every``)."""
        if timer.cancelled or timer not in self.active:
            return False
        timer._handle = None
        if timer.interval is None:
            self.active.discard(timer)
            return True
        # Fixed rate; a tick that fell behind (a slow handler) skips ahead
        # instead of firing a burst of late ticks.
        now = asyncio.get_running_loop().time()
        timer.when += timer.interval
        if timer.when <= now:
            timer.when = now + timer.interval
        self._arm(timer)
        return True

    def cancel_all(self) -> None:
        for timer in list(self.active):
            timer.cancel()


async def run_timer(timer: Timer, context: RoomContext) -> None:
    result = timer.fn(context)
    if inspect.isawaitable(result):
        await result
