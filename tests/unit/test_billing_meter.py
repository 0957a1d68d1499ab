"""The meter and its flush: counts in memory, upserts that add up across
processes, and mergeable histograms whose percentiles are within one bucket."""

from __future__ import annotations

import math
import random

import pytest

from billing import flush, histogram
from billing.meter import Meter
from billing.models import LatencyBucket, Metric, UsageMinute
from rooms.models import Room

MINUTE = 29_000_000  # some minute since the epoch


def two_processes() -> tuple[Meter, Meter]:
    a, b = Meter(), Meter()
    a.minute = b.minute = MINUTE
    return a, b


@pytest.mark.django_db
def test_two_processes_flushing_the_same_minute_add_up() -> None:
    Room.objects.create(slug="r1")
    a, b = two_processes()
    # A owns the room: it sees the joins (peak 2) and commits.
    a.joined("r1", "c1")
    a.joined("r1", "c2")
    a.left("r1", "c1")
    a.frame_in("r1", 100)
    a.committed("r1", events=1, rows=1, nbytes=40)
    a.delivered("r1", 3, 50)
    # B holds one of the sockets: frames in and deliveries out only.
    b.frame_in("r1", 10)
    b.frame_in("r1", 20)
    b.delivered("r1", 1, 50)
    b.processed("r1", 0.002)
    for m in (a, b):
        taken, ops = m.take()
        for _, c in taken:
            c.minute = MINUTE  # take() may have rotated to the real minute
        flush.write(taken, ops)
    # A flushes a second part of the same minute: added, peak kept.
    a.minute = MINUTE
    a.frame_in("r1", 5)
    taken, ops = a.take()
    for _, c in taken:
        c.minute = MINUTE
    flush.write(taken, ops)
    row = UsageMinute.objects.get(room__slug="r1")
    assert (row.connections_opened, row.connections_closed, row.peak_connections) == (2, 1, 2)
    assert (row.messages_in, row.bytes_in) == (4, 135)
    assert (row.messages_out, row.bytes_out) == (4, 200)
    assert (row.events_written, row.rows_written, row.storage_bytes_written) == (1, 1, 40)
    assert row.minute.timestamp() == MINUTE * 60
    assert list(LatencyBucket.objects.values_list("metric", "bucket", "count")) == [
        (Metric.PROCESSING, histogram.bucket_of(2.0), 1)
    ]


@pytest.mark.django_db
def test_a_flush_bills_existing_rooms_only_and_counts_their_rows() -> None:
    """Each upsert finds its room by slug itself: a room refused before it
    existed (or deleted since) gets no row, and does not fail the others."""
    Room.objects.create(slug="here")
    Room.objects.create(slug="also-here")
    m = Meter()
    m.minute = MINUTE
    for room in ("here", "never-created", "also-here"):
        m.frame_in(room, 10)
        m.processed(room, 0.004)
    taken, ops = m.take()
    for _, c in taken:
        c.minute = MINUTE
    assert flush.write(taken, ops) == 2
    assert sorted(UsageMinute.objects.values_list("room__slug", "messages_in")) == [("also-here", 1), ("here", 1)]
    assert sorted(LatencyBucket.objects.values_list("room__slug", "count")) == [("also-here", 1), ("here", 1)]


def test_rotation_keeps_minutes_apart_and_peak_carries_over() -> None:
    m = Meter()
    m.minute = MINUTE
    m.joined("r", "c1")
    m.joined("r", "c2")
    m.frame_in("r", 7)
    m.rotate(MINUTE + 1)
    m.frame_in("r", 9)
    taken, _ = m.take()
    by_minute = {c.minute: c for _, c in taken if c.minute in (MINUTE, MINUTE + 1)}
    assert by_minute[MINUTE].messages_in == 1 and by_minute[MINUTE].bytes_in == 7
    assert by_minute[MINUTE + 1].messages_in == 1 and by_minute[MINUTE + 1].bytes_in == 9
    # Two sockets still open in the new minute: its peak is 2 without a join.
    assert by_minute[MINUTE + 1].peak_connections == 2
    assert by_minute[MINUTE + 1].connections_opened == 0


def test_leave_of_an_unknown_connection_is_not_counted() -> None:
    m = Meter()
    m.left("r", "never-joined")
    assert m.connections("r") == 0
    taken, _ = m.take()
    assert all(c.connections_closed == 0 for _, c in taken)


def test_disabled_meter_counts_nothing() -> None:
    m = Meter()
    m.enabled = False
    m.frame_in("r", 10)
    m.joined("r", "c")
    m.delivered("r", 5, 10)
    taken, ops = m.take()
    assert taken == [] and ops == []


def test_cpu_is_apportioned_by_work() -> None:
    m = Meter()
    for _ in range(3):
        m.frame_in("busy", 1)
    m.frame_in("quiet", 1)
    taken, _ = m.take()
    flush.apportion_cpu(taken, 4_000)
    cpu = {room: c.cpu_us for room, c in taken}
    assert cpu == {"busy": 3_000, "quiet": 1_000}


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_of_merged_histograms_are_within_one_bucket(seed: int) -> None:
    rng = random.Random(seed)
    processes = []
    values: list[float] = []
    for _ in range(3):  # three processes, each its own histogram
        counts: dict[int, int] = {}
        for _ in range(rng.randint(50, 2000)):
            v = rng.lognormvariate(1.0, 1.5)  # ms: 0.01 ms to seconds
            values.append(v)
            b = histogram.bucket_of(v)
            counts[b] = counts.get(b, 0) + 1
        processes.append(counts)
    merged = histogram.merge(processes)
    values.sort()
    for q in (0.5, 0.95, 0.99):
        exact = values[max(1, math.ceil(q * len(values))) - 1]
        got = histogram.percentile(merged, q)
        assert got is not None
        assert abs(histogram.bucket_of(got) - histogram.bucket_of(exact)) <= 1
        # The reported bound is at or above the exact value, by at most a bucket's width.
        assert exact <= got <= exact * 2 ** (1 / histogram.STEPS_PER_DOUBLING) + 1e-9


def test_bucket_edges() -> None:
    assert histogram.bucket_of(0) == 0
    assert histogram.bucket_of(histogram.BOUNDS_MS[10]) == 10
    assert histogram.bucket_of(histogram.BOUNDS_MS[10] * 1.0001) == 11
    assert histogram.bucket_of(1e12) == histogram.OVERFLOW
    assert histogram.percentile({}, 0.5) is None
