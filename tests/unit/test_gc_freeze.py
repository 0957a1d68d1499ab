"""A server process freezes what survives each full garbage collection and
thaws it all every ``DORM_GC_THAW_SECONDS`` (rooms/runtime/gc_freeze.py).

``gc.get_objects()`` lists the objects of the three generations, not the
frozen ones: an object missing from it while alive is frozen.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import types
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from rooms.runtime import gc_freeze


class Node:
    """A container the collector tracks; ``peer`` makes cycles."""

    def __init__(self) -> None:
        self.peer: Node | None = None


def tracked(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    """The test process keeps Python's own collector afterwards, frozen
    objects or none as before (``config.asgi`` freezes at import)."""
    frozen = gc.get_freeze_count()
    yield
    gc_freeze.uninstall()
    gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()


def test_a_full_collection_freezes_what_survived(loop: asyncio.AbstractEventLoop) -> None:
    watch = gc_freeze.install(600, loop)
    kept = Node()
    assert tracked(kept)
    frozen_before = gc.get_freeze_count()
    gc.collect()
    assert not tracked(kept)  # frozen: the next full collection skips it
    assert gc.get_freeze_count() > frozen_before
    assert gc.get_objects(generation=2) == []
    young = Node()
    gc.collect(1)  # a young collection freezes nothing
    assert tracked(young)
    assert watch.pauses[2][-1] == 0 and sum(watch.pauses[2]) >= 1


def test_a_cycle_among_frozen_objects_is_freed_by_the_thaw(loop: asyncio.AbstractEventLoop) -> None:
    watch = gc_freeze.install(600, loop)
    a, b = Node(), Node()
    a.peer, b.peer = b, a
    gone = weakref.ref(a)
    gc.collect()  # alive now: frozen
    del a, b
    gc.collect()
    assert gone() is not None  # garbage, but frozen: full collections skip it
    collected = watch.thaw()
    assert gone() is None
    assert collected >= 2 and watch.thaw_collected == collected and watch.thaws == 1
    assert gc.get_freeze_count() > 0  # the survivors are frozen again
    survivor = Node()
    watch.thaw()
    assert not tracked(survivor)


def test_the_thaw_counts_a_cycle_that_a_finalizer_breaks(loop: asyncio.AbstractEventLoop) -> None:
    """A suspended generator that refers back to its owner (websockets'
    parser): collecting it closes it, which frees the cycle by reference
    count during the collection, outside ``gc.collect()``'s own count."""
    watch = gc_freeze.install(600, loop)

    class Owner:
        def parse(self) -> Any:
            while True:
                yield self

    owners = [Owner() for _ in range(100)]
    for owner in owners:
        owner.parser = owner.parse()
        next(owner.parser)
    gone = weakref.ref(owners[0])
    gc.collect()  # alive now: frozen
    del owners, owner
    gc.collect()
    assert gone() is not None
    freed = watch.thaw()
    assert gone() is None
    assert freed >= 200 and watch.thaw_collected == freed  # each owner and its generator (and their dicts)


def test_a_reader_on_another_thread_never_sees_a_thaw_half_done(loop: asyncio.AbstractEventLoop) -> None:
    """``/metrics`` reads the counts on Django's thread while the event loop
    thaws. The thaw hands the GIL over inside its collection (the watch's
    own callback is Python), so without its lock a reader saw nothing
    frozen beside a thaw counter that said the thaw was done (a flaky
    failure of tests/e2e/test_gc_freeze.py, and a drop to 0 on a graph)."""
    watch = gc_freeze.install(600, loop)
    kept = [Node() for _ in range(5_000)]
    gc.collect()  # alive: frozen
    floor = len(kept)
    torn: list[tuple[int, int, int]] = []  # fewer frozen than the objects kept alive all along
    thaws_seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            counts = watch.counts()
            thaws_seen.add(counts[1])
            if counts[0] < floor:
                torn.append(counts)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over at every chance
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(10):
            watch.thaw()
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert watch.thaws == 10 and len(thaws_seen) > 1, "the reader ran only before or after the thaws"
    assert torn[:3] == []
    assert len(kept) == floor


def test_a_frozen_object_is_still_freed_by_its_reference_count(loop: asyncio.AbstractEventLoop) -> None:
    gc_freeze.install(600, loop)
    kept = Node()
    kept.peer = Node()
    gone = weakref.ref(kept.peer)
    gc.collect()
    assert not tracked(kept)
    kept.peer = None
    assert gone() is None


async def test_the_thaw_runs_on_the_loop_every_thaw_seconds() -> None:
    watch = gc_freeze.install(0.05)
    a = Node()
    a.peer = a
    gone = weakref.ref(a)
    gc.collect()
    del a
    # Each thaw is a full collection of this whole test process: on a busy
    # machine a few of them take a while.
    deadline = asyncio.get_running_loop().time() + 20
    while watch.thaws < 3 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert watch.thaws >= 3
    assert gone() is None
    gc_freeze.uninstall()
    thaws = watch.thaws
    await asyncio.sleep(0.2)
    assert watch.thaws == thaws  # uninstalled: its timer is gone too
    assert watch not in gc.callbacks


def test_zero_keeps_pythons_full_collections_and_times_them() -> None:
    watch = gc_freeze.install(0)
    kept = Node()
    frozen = gc.get_freeze_count()
    gc.collect()
    assert tracked(kept) and gc.get_freeze_count() == frozen
    gc.collect(0)
    gc.collect(1)
    assert [sum(counts) for counts in watch.pauses] >= [1, 1, 1]
    assert all(seconds > 0 for seconds in watch.pause_seconds)


def test_pauses_land_in_their_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    watch = gc_freeze.GCWatch(freeze_survivors=False)  # not installed: only these calls reach it
    for seconds, bucket in ((0.0004, 0), (0.001, 0), (0.003, 1), (0.7, 6), (30.0, len(gc_freeze.PAUSE_BOUNDS))):
        monkeypatch.setattr(gc_freeze, "perf_counter", lambda: 100.0)
        watch("start", {"generation": 2})
        monkeypatch.setattr(gc_freeze, "perf_counter", lambda: 100.0 + seconds)
        watch("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
        assert watch.pauses[2][bucket] >= 1, (seconds, watch.pauses[2])
    assert sum(watch.pauses[2]) == 5 and watch.pause_seconds[2] == pytest.approx(30.7044)


def test_a_negative_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="DORM_GC_THAW_SECONDS must be 0"):
        gc_freeze.install(-1)
    assert gc_freeze.watch is None


@pytest.mark.django_db
def test_metrics_show_the_pauses_and_the_frozen_objects(loop: asyncio.AbstractEventLoop) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from billing.metrics import exposition

    def families() -> dict:
        return {f.name: f for f in text_string_to_metric_families(exposition().decode())}

    assert "dorm_process_gc_pause_seconds" not in families()  # no server installed the watch
    watch = gc_freeze.install(600, loop)
    gc.collect()
    watch.thaw()
    found = families()
    full = {s.name: s.value for s in found["dorm_process_gc_pause_seconds"].samples if s.labels["generation"] == "2"}
    assert full["dorm_process_gc_pause_seconds_count"] >= 2  # the collection and the thaw's
    assert full["dorm_process_gc_pause_seconds_sum"] > 0
    assert found["dorm_process_gc_frozen_objects"].samples[0].value == gc.get_freeze_count() > 0
    assert found["dorm_process_gc_thaws"].samples[0].value == 1
    assert found["dorm_process_gc_thaw_interval_seconds"].samples[0].value == 600
    assert found["dorm_process_gc_thaw_collected_objects"].samples[0].value == watch.thaw_collected


def test_by_default_daphne_and_uvicorns_sansio_protocol_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvicorn imports the protocol of its --ws only: the loaded module says which.
    from rooms.uvicorn_server import LEGACY_MODULE as legacy
    from rooms.uvicorn_server import SANSIO_MODULE as sansio

    for name in (sansio, legacy):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert gc_freeze.default_thaw_seconds("daphne") == 600
    assert gc_freeze.default_thaw_seconds("lifespan") == 0  # a server not known here
    monkeypatch.setitem(sys.modules, sansio, types.ModuleType(sansio))
    assert gc_freeze.default_thaw_seconds("lifespan") == 600  # uvicorn's default protocol
    monkeypatch.setitem(sys.modules, legacy, types.ModuleType(legacy))
    assert gc_freeze.default_thaw_seconds("lifespan") == 0  # its legacy --ws websockets: cycles per closed socket
