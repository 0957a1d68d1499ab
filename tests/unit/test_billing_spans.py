"""Silent minutes cost nothing to meter, and their open sockets are still billed.

An idle server writes no usage row for a silent room: the room's level of open
connections is a ``ConnectionSpan`` written when it changes, and every reader
takes a minute's peak as the larger of its row's peak and the span covering it.
The reference here is the old model (a row per room per minute with open
sockets, holding the minute's peak), driven through the real meter and flush
into the test database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import flush, peaks, reports, spans, stats
from billing.costs import usage_between
from billing.meter import Meter, meter
from billing.metrics import DormCollector
from billing.models import ConnectionSpan, UsageMinute
from presence.models import PresenceProcess
from presence.process import PROCESS_ID
from presence.sweep import sweep_stale
from rooms.models import Room

pytestmark = pytest.mark.django_db

MINUTE = 29_000_000  # a past minute since the epoch


def at(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, tz=UTC)


def room_with_sockets(slug: str, *connections: str) -> Meter:
    """A new room, and a meter in MINUTE that saw ``connections`` join it."""
    Room.objects.get_or_create(slug=slug)
    m = Meter()
    m.minute = MINUTE
    for conn in connections:
        m.joined(slug, conn)
    return m


def flush_minute(m: Meter, minute: int) -> int:
    """Flush what ``m`` counted in (test) minute ``minute``, then go on counting
    in the next one (``take`` rotates to the real minute; the counters keep
    the minute they were counted in)."""
    rows = flush.flush_sync(m)
    m.rotate(minute + 1)
    return rows


def spans_of(slug: str) -> list[tuple[int, int | None, int]]:
    return [
        (peaks.minute_of(s), None if u is None else peaks.minute_of(u), n)
        for s, u, n in ConnectionSpan.objects.filter(room__slug=slug).order_by("since").values_list("since", "until", "connections")
    ]


def test_a_silent_room_with_open_sockets_writes_nothing_and_is_still_billed() -> None:
    m = room_with_sockets("quiet", "c1", "c2")
    assert flush_minute(m, MINUTE) == 1
    # Twenty silent minutes: no counters, no rows, no span writes.
    for minute in range(MINUTE + 1, MINUTE + 21):
        m.rotate(minute)
        assert m.rooms == {}
        taken, _ops, changes = flush._take(m)
        assert (taken, changes) == ([], [])
        m.rotate(minute + 1)
    assert UsageMinute.objects.count() == 1
    assert spans_of("quiet") == [(MINUTE + 1, None, 2)]
    # Every reader sees the two sockets in the silent minutes.
    usage = usage_between(at(MINUTE + 5), at(MINUTE + 15))
    assert usage.peak_connections == 2 and usage.messages_in == 0
    series = stats.usage_series(at(MINUTE), at(MINUTE + 21))
    assert [p["connections"] for p in series] == [2] * 21
    room = Room.objects.get(slug="quiet")
    report = reports.usage_report(room.pk, at(MINUTE), at(MINUTE + 10))
    assert [r["minute"] // 60_000 for r in report["minutes"]] == list(range(MINUTE, MINUTE + 10))
    assert [r["peak_connections"] for r in report["minutes"]] == [2] * 10
    assert report["minutes"][3]["messages_in"] == 0 and report["minutes"][0]["connections_opened"] == 2
    assert report["totals"]["peak_connections"] == 2
    # A room with sockets and no traffic is in the month's costs (hosted: per peak connection).
    costs = stats.room_costs(at(MINUTE + 1), at(MINUTE + 20))
    assert costs[room.pk].hosted.total > 0


def test_levels_change_only_when_a_minute_ends_elsewhere() -> None:
    m = room_with_sockets("r", "a", "b", "c")
    flush_minute(m, MINUTE)
    # A join and a leave in one minute: peak 4 in its row, the level stays 3.
    m.rotate(MINUTE + 2)
    m.joined("r", "d")
    m.left("r", "a")
    flush_minute(m, MINUTE + 2)
    assert spans_of("r") == [(MINUTE + 1, None, 3)]
    m.rotate(MINUTE + 5)
    m.left("r", "b")
    flush_minute(m, MINUTE + 5)
    assert spans_of("r") == [(MINUTE + 1, MINUTE + 6, 3), (MINUTE + 6, None, 2)]
    m.rotate(MINUTE + 8)
    m.left("r", "c")
    m.left("r", "d")
    flush_minute(m, MINUTE + 8)
    assert spans_of("r") == [(MINUTE + 1, MINUTE + 6, 3), (MINUTE + 6, MINUTE + 9, 2)]
    room_peaks = peaks.load(at(MINUTE), at(MINUTE + 12))
    assert room_peaks.total_by_minute() == [3, 3, 4, 3, 3, 3, 2, 2, 2, 0, 0, 0]
    assert room_peaks.max_total() == 4


def test_a_minute_flushed_in_parts_ends_at_its_last_level() -> None:
    m = room_with_sockets("r", "a")
    flush_minute(m, MINUTE)
    for conn in ("b", "c"):  # a second part of the same minute
        m.minute = MINUTE
        m.joined("r", conn)
        flush_minute(m, MINUTE)
    assert spans_of("r") == [(MINUTE + 1, None, 3)]
    m.minute = MINUTE  # a third part: everybody left
    for conn in ("a", "b", "c"):
        m.left("r", conn)
    flush_minute(m, MINUTE)
    assert spans_of("r") == []
    assert UsageMinute.objects.get().peak_connections == 3


def test_a_failed_span_write_is_written_by_the_next_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    m = room_with_sockets("r", "a")

    def down(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database down")

    real = spans.write_changes
    monkeypatch.setattr(spans, "write_changes", down)
    flush_minute(m, MINUTE)
    assert ConnectionSpan.objects.count() == 0 and UsageMinute.objects.count() == 0
    monkeypatch.setattr(spans, "write_changes", real)
    # The next minutes are silent; the level is written all the same.
    m.rotate(MINUTE + 3)
    flush.flush_sync(m)
    assert spans_of("r") == [(MINUTE + 1, None, 1)]


def test_the_spans_of_a_process_that_stopped_beating_end_at_its_last_beat() -> None:
    room = Room.objects.create(slug="r")
    last_beat = timezone.now() - timedelta(minutes=10)
    PresenceProcess.objects.create(process="gone:1:ab", started_at=last_beat - timedelta(hours=1), beat_at=last_beat)
    ConnectionSpan.objects.create(room=room, process="gone:1:ab", since=at(peaks.minute_of(last_beat) - 30), connections=4)
    ConnectionSpan.objects.create(room=room, process=PROCESS_ID, since=at(peaks.minute_of(last_beat) - 30), connections=1)
    assert sweep_stale()["processes_dead"] == 1
    gone = ConnectionSpan.objects.get(process="gone:1:ab")
    assert peaks.minute_of(gone.until) == peaks.minute_of(last_beat) + 1
    assert ConnectionSpan.objects.get(process=PROCESS_ID).until is None
    # Billed up to the dead process's last beat only (where both processes
    # counted the room, the larger count holds).
    now = timezone.now()
    series = stats.usage_series(last_beat.replace(second=0, microsecond=0), now)
    assert [p["connections"] for p in series[:2]] == [4, 1] and series[-1]["connections"] == 1


def test_a_clean_stop_closes_the_process_spans() -> None:
    Room.objects.create(slug="r")
    meter.reset()
    try:
        meter.joined("r", "a")
        meter.joined("r", "b")
        async_to_sync(flush.flush_now)()
        assert [s[2] for s in spans_of("r")] == [2]
        async_to_sync(flush.stop_flusher)()
        (span,) = ConnectionSpan.objects.filter(room__slug="r")
        assert span.until is not None and span.until <= timezone.now() + timedelta(minutes=1)
        assert meter.span_levels == {}
    finally:
        meter.reset()


def test_metrics_and_active_rooms_count_silent_sockets() -> None:
    room = Room.objects.create(slug="r")
    Room.objects.create(slug="empty")
    lm = stats.last_minute(timezone.now())
    ConnectionSpan.objects.create(room=room, process=PROCESS_ID, since=lm - timedelta(minutes=30), connections=6)
    gauges = {m.name: m.samples[0].value for m in DormCollector().collect() if m.name in ("dorm_connections", "dorm_active_rooms")}
    assert gauges == {"dorm_connections": 6, "dorm_active_rooms": 1}
    assert stats.dashboard()["active_rooms"] == 1


def _reference_peaks(script: list[list[tuple[str, str]]]) -> list[int]:
    """The old model: each minute's peak (the level at its start, or more)."""
    live: set[str] = set()
    out = []
    for ops in script:
        peak = len(live)
        for op, conn in ops:
            if op == "join":
                live.add(conn)
            elif op == "leave":
                live.discard(conn)
            peak = max(peak, len(live))
        out.append(peak)
    return out


minute_ops = st.lists(
    st.tuples(st.sampled_from(["join", "leave", "frame", "flush"]), st.sampled_from(["a", "b", "c", "d"])), max_size=6
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(minute_ops, min_size=1, max_size=12))
def test_spans_and_rows_give_the_same_peaks_as_a_row_per_minute(script: list[list[tuple[str, str]]]) -> None:
    ConnectionSpan.objects.all().delete()
    UsageMinute.objects.all().delete()
    m = room_with_sockets("r")
    for i, ops in enumerate(script):
        minute = MINUTE + i
        m.rotate(minute)
        for op, conn in ops:
            if op == "join":
                m.joined("r", conn)
            elif op == "leave":
                m.left("r", conn)
            elif op == "frame":
                m.frame_in("r", 10)
            elif op == "flush":  # a part of the minute flushed
                m.minute = minute
                flush.flush_sync(m)
                m.rotate(minute)
        if i % 3 == 2 or i == len(script) - 1:
            flush_minute(m, minute)
    expected = _reference_peaks([[(op, c) for op, c in ops if op in ("join", "leave")] for ops in script])
    room_peaks = peaks.load(at(MINUTE), at(MINUTE + len(script)))
    assert room_peaks.total_by_minute() == expected
    assert room_peaks.max_total() == max(expected)
    assert usage_between(at(MINUTE), at(MINUTE + len(script))).peak_connections == max(expected)


def test_the_admin_lists_a_silent_room_with_its_open_sockets(rf: pytest.FixtureRequest) -> None:
    from django.contrib import admin

    from billing.admin import BillingRoomAdmin

    room = Room.objects.create(slug="r")
    Room.objects.create(slug="empty")
    lm = stats.last_minute(timezone.now())
    ConnectionSpan.objects.create(room=room, process=PROCESS_ID, since=lm - timedelta(minutes=30), connections=6)
    listed = BillingRoomAdmin(Room, admin.site).get_queryset(rf.get("/admin/rooms/room/"))  # type: ignore[attr-defined]
    assert {r.slug: r._last_peak for r in listed} == {"r": 6, "empty": 0}
