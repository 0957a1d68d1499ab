"""Rooms' peak connections per minute, read from usage rows and connection spans.

A room's peak in a minute is the larger of its ``UsageMinute`` row's peak (a
minute with traffic, a join or a leave) and the level of the connection span
covering the minute (open sockets carried over silent minutes, which have no
row). Where several processes' spans cover a room's minute (a lease that moved
while sockets stayed), the largest counts, as the usage upsert keeps the larger
peak. An open span holds until the current minute.

``load(start, end)`` reads the rows with a peak and the spans of [start, end)
once; the methods answer what each page needs (the largest minute's total over
rooms for a cost, a total per minute for a chart, each room's largest minute,
one room's minutes) without a value per room and minute in memory.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db.models import Q
from django.utils import timezone

from billing.models import ConnectionSpan, UsageMinute


def minute_of(at: datetime) -> int:
    """Minutes since the epoch of the minute ``at`` falls in."""
    return int(at.timestamp() // 60)


def minute_ceil(at: datetime) -> int:
    """The first minute index at or after ``at`` (an end bound: exclusive)."""
    seconds = at.timestamp()
    return int(-(-seconds // 60))


def at_minute(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, tz=UTC)


@dataclass
class Peaks:
    first: int  # minute index, inclusive
    last: int  # exclusive
    # room id -> minute index -> the row's peak (rows with a peak only)
    rows: dict[int, dict[int, int]] = field(default_factory=dict)
    # room id -> [(first minute, end minute, level)], clipped to [first, last)
    spans: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)

    def rooms(self) -> set[int]:
        """Rooms with at least one connection at some minute of the range."""
        return set(self.rows) | set(self.spans)

    def segments(self, room_id: int) -> Iterator[tuple[int, int, int]]:
        """The room's peak as (first minute, end minute, peak) pieces, peak > 0."""
        rows = self.rows.get(room_id, {})
        spans = self.spans.get(room_id, [])
        points = {m for s in spans for m in s[:2]} | set(rows) | {m + 1 for m in rows}
        starts: dict[int, list[int]] = defaultdict(list)
        ends: dict[int, list[int]] = defaultdict(list)
        for since, until, level in spans:
            starts[since].append(level)
            ends[until].append(level)
        active: dict[int, int] = {}  # level -> spans at it (several processes)
        ordered = sorted(points)
        for a, b in zip(ordered, ordered[1:]):
            for level in ends.get(a, ()):
                active[level] -= 1
                if not active[level]:
                    del active[level]
            for level in starts.get(a, ()):
                active[level] = active.get(level, 0) + 1
            peak = max(active) if active else 0
            if b == a + 1 and a in rows:
                peak = max(peak, rows[a])
            if peak > 0:
                yield a, b, peak

    def max_total(self) -> int:
        """The largest minute's sum of the rooms' peaks."""
        events: list[tuple[int, int]] = []
        for room_id in self.rooms():
            for a, b, peak in self.segments(room_id):
                events.append((a, peak))
                events.append((b, -peak))
        heapq.heapify(events)  # by minute; at the same minute the ends (negative) first
        total = best = 0
        while events:
            _, delta = heapq.heappop(events)
            total += delta
            best = max(best, total)
        return best

    def total_by_minute(self) -> list[int]:
        """The sum of the rooms' peaks for each minute of the range."""
        diff = [0] * (self.last - self.first + 1)
        for room_id in self.rooms():
            for a, b, peak in self.segments(room_id):
                diff[a - self.first] += peak
                diff[b - self.first] -= peak
        out = []
        total = 0
        for d in diff[:-1]:
            total += d
            out.append(total)
        return out

    def max_by_room(self) -> dict[int, int]:
        return {room_id: max((p for _, _, p in self.segments(room_id)), default=0) for room_id in self.rooms()}

    def of_room(self, room_id: int) -> dict[int, int]:
        """One room's peak per minute (minutes with a connection)."""
        return {m: peak for a, b, peak in self.segments(room_id) for m in range(a, b)}


def load(start: datetime, end: datetime, room_ids: Iterable[int] | None = None) -> Peaks:
    """The rows with a peak and the spans of the minutes in [start, end)."""
    first, last = minute_of(start), minute_ceil(end)
    peaks = Peaks(first, last)
    if last <= first:
        return peaks
    ids = None if room_ids is None else list(room_ids)
    rows = UsageMinute.objects.filter(minute__gte=at_minute(first), minute__lt=at_minute(last), peak_connections__gt=0)
    spans = ConnectionSpan.objects.filter(Q(until__isnull=True) | Q(until__gt=at_minute(first)), since__lt=at_minute(last))
    if ids is not None:
        rows = rows.filter(room_id__in=ids)
        spans = spans.filter(room_id__in=ids)
    for room_id, minute, peak in rows.values_list("room_id", "minute", "peak_connections").iterator():
        peaks.rows.setdefault(room_id, {})[minute_of(minute)] = peak
    # An open span holds up to the current minute, not into the future.
    now_end = minute_of(timezone.now()) + 1
    for room_id, since, until, level in spans.values_list("room_id", "since", "until", "connections").iterator():
        a = max(first, minute_of(since))
        b = min(last, now_end if until is None else minute_of(until))
        if b > a and level > 0:
            peaks.spans.setdefault(room_id, []).append((a, b, level))
    return peaks
