"""The server tunes Python's garbage collector at start (rooms.asgi.tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from rooms.asgi import tune_gc


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_the_asgi_application_applies_the_tuning() -> None:
    import config.asgi  # noqa: F401  (what daphne and uvicorn import)

    assert gc.get_freeze_count() > 0  # startup's objects are out of the collector's way
    assert gc.get_threshold() == (700, 10, 10)  # Python's, unless DORM_GC_THRESHOLDS says otherwise
    from rooms.runtime import gc_freeze

    # Survivors are frozen only once a server starts (rooms.asgi.start_server_process).
    assert gc_freeze.watch is None


def test_the_setting_overrides_and_bad_values_are_refused(thresholds: None) -> None:
    tune_gc("700,10,10")
    assert gc.get_threshold() == (700, 10, 10)
    for bad in ("x", "700,10", "0,10,10", "700,-1,10", "1,2,3,4"):
        with pytest.raises(ValueError, match="DORM_GC_THRESHOLDS must be three integers"):
            tune_gc(bad)


def test_cycles_are_still_collected(thresholds: None) -> None:
    tune_gc("")
    assert gc.get_threshold() == (700, 10, 10)
    collected_before = sum(s["collected"] for s in gc.get_stats())

    class Node:
        def __init__(self) -> None:
            self.me = self

    for _ in range(gc.get_threshold()[0] * 2):  # enough new objects for a young collection
        Node()
    assert sum(s["collected"] for s in gc.get_stats()) > collected_before
