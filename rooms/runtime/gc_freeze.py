"""Full garbage collections in a server process: measured, and kept short.

Python 3.11 collects its oldest generation each time the objects that
survived into it grow by a quarter, and each such collection walks every
tracked object in the process while every room in it waits. A process with
10,000 sockets open tracks 0.8-1.4 million objects: a full collection took
0.6-1.06 s, and a process gaining sockets ran one every few seconds (33 in
one run of the hibernation benchmark, 10.6 s in all; docs/performance.md,
"Fourteenth round", and "Fifteenth round" for what freezing bought).

What survives a full collection is, nearly all of it, what the process
holds on purpose: sockets, consumers, rooms. ``GCWatch`` freezes it
(``gc.freeze()``) as each full collection ends, so the next one walks only
what was allocated since. A frozen object freed by its reference count is
freed as usual; what freezing hides is a frozen object that later becomes
part of a reference cycle nobody holds. Dorm's own long-lived objects leave
none (a closed daphne socket and a sleeping room are freed by reference
count: ``rooms.daphne_server.ClosedWithoutCycles``, ``RoomActor.run``), and
every ``thaw_seconds`` the watch unfreezes everything and runs one full
collection of it all, which frees any such cycle (counted in
``thaw_collected``) and freezes the survivors again.

The watch also times every collection (``gc.callbacks``): a pause histogram
per generation for ``/metrics``.

Installed by the servers' start (``rooms.asgi.start_server_process``), not
at import: a test process importing the ASGI application keeps Python's own
collector.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
from bisect import bisect_left
from time import perf_counter

log = logging.getLogger("dorm.rooms")

# Upper bounds (seconds) of the pause histogram's buckets; one more for longer.
PAUSE_BOUNDS = (0.001, 0.005, 0.02, 0.1, 0.25, 0.5, 1.0, 2.5)
GENERATIONS = 3


class GCWatch:
    """A ``gc.callbacks`` entry: times each collection and, when
    ``freeze_survivors``, freezes what a full collection left."""

    def __init__(self, freeze_survivors: bool, thaw_seconds: float = 0.0) -> None:
        self.freeze_survivors = freeze_survivors
        self.thaw_seconds = thaw_seconds  # reported on /metrics: is this process freezing, how often it thaws
        self._started = 0.0
        # Per generation: counts per bucket of PAUSE_BOUNDS (+1 for longer)
        # and the seconds in all.
        self.pauses = [[0] * (len(PAUSE_BOUNDS) + 1) for _ in range(GENERATIONS)]
        self.pause_seconds = [0.0] * GENERATIONS
        self.thaws = 0
        self.thaw_collected = 0
        # Held by a thaw from its unfreeze to its counters: see counts().
        self._thaw_lock = threading.Lock()

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        # Runs inside every collection (every 700 allocations): keep it short.
        if phase == "start":
            self._started = perf_counter()
            return
        elapsed = perf_counter() - self._started
        generation = info["generation"]
        self.pause_seconds[generation] += elapsed
        self.pauses[generation][bisect_left(PAUSE_BOUNDS, elapsed)] += 1
        if generation == GENERATIONS - 1 and self.freeze_survivors:
            # The collection is over (its lists merged, its garbage freed):
            # what is left in any generation is alive now.
            gc.freeze()

    def counts(self) -> tuple[int, int, int]:
        """(frozen objects, thaws, objects the thaws freed), read together.

        For readers on another thread (a ``/metrics`` request runs on
        Django's): the thaw runs on the event loop and can hand the GIL over
        between its unfreeze and the refreeze at the end of its collection.
        Read then, the frozen count was 0 or a part, beside a thaw counter
        that a moment later said the thaw was done: a graph dropped to 0, and
        a reader waiting for the next thaw took that for the state after it.
        """
        with self._thaw_lock:
            return gc.get_freeze_count(), self.thaws, self.thaw_collected

    def thaw(self) -> int:
        """One full collection of everything, frozen or not; returns the
        tracked objects it freed.

        Counted as the tracked objects before it less the survivors it froze,
        not as ``gc.collect()``'s count of unreachable objects: a cycle that
        a finalizer breaks (a suspended generator's, closed when collected)
        is freed by reference counting during the collection and left out of
        that count. The lists of the unfrozen generations cost little next
        to the collection itself."""
        with self._thaw_lock:
            frozen = gc.get_freeze_count()
            started = perf_counter()
            tracked = frozen + sum(len(gc.get_objects(generation)) for generation in range(GENERATIONS))
            gc.unfreeze()
            gc.collect()  # this watch freezes the survivors again
            freed = max(0, tracked - gc.get_freeze_count() - len(gc.get_objects(0)))
            elapsed = perf_counter() - started
            self.thaws += 1
            self.thaw_collected += freed
        log.info("gc thaw frozen=%d freed=%d duration_ms=%.1f", frozen, freed, elapsed * 1000)
        return freed


def default_thaw_seconds(server: str) -> float:
    """``DORM_GC_THAW_SECONDS`` unset: freeze where closed sockets leave no
    reference cycle, so that freezing holds nothing: daphne, and a lifespan
    server (``server`` "lifespan") that is uvicorn with its
    ``websockets-sansio`` protocol (its default, and ``make run-uvicorn``'s):
    0.1 objects per closed socket in cycles. uvicorn's legacy ``--ws
    websockets`` protocol leaves 60-90 (its tasks, transport, logger
    adapter); frozen, they would wait for the thaw, 10,000 sessions closing
    between two thaws all held. So that protocol, and any server not known
    here, keeps Python's own full collections (timed)."""
    from rooms.uvicorn_server import LEGACY_MODULE, SANSIO_MODULE

    if server == "daphne":
        return 600.0
    # uvicorn imports only the protocol it serves with (its ``--ws``).
    loaded = sys.modules
    if SANSIO_MODULE in loaded and LEGACY_MODULE not in loaded:
        return 600.0
    return 0.0


# The process's watch, once a server installed it.
watch: GCWatch | None = None
_thaw_timer: asyncio.TimerHandle | None = None


def install(thaw_seconds: float, loop: asyncio.AbstractEventLoop | None = None) -> GCWatch:
    """Time every collection; with ``thaw_seconds`` > 0, freeze what full
    collections leave and thaw it all every ``thaw_seconds`` on ``loop``
    (the running loop if not given). ``thaw_seconds`` 0: Python's own full
    collections, timed."""
    global watch
    if thaw_seconds < 0:
        raise ValueError(f"DORM_GC_THAW_SECONDS must be 0 (off) or a number of seconds, not {thaw_seconds!r}")
    uninstall()
    watch = GCWatch(freeze_survivors=thaw_seconds > 0, thaw_seconds=thaw_seconds)
    gc.callbacks.append(watch)
    if thaw_seconds > 0:
        _schedule_thaw(loop or asyncio.get_running_loop(), thaw_seconds)
    return watch


def uninstall() -> None:
    global watch, _thaw_timer
    if _thaw_timer is not None:
        _thaw_timer.cancel()
        _thaw_timer = None
    if watch is not None:
        if watch in gc.callbacks:
            gc.callbacks.remove(watch)
        watch = None


def _schedule_thaw(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    global _thaw_timer

    def thaw() -> None:
        if watch is None:
            return
        watch.thaw()
        _schedule_thaw(loop, seconds)

    _thaw_timer = loop.call_later(seconds, thaw)
