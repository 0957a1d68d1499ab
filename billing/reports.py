"""What ``GET /api/rooms/<slug>/usage?from=&to=`` returns (PROTOCOL.md section
6): per-minute counters, latency percentiles and estimated cost. The REST API
(rooms/api/) calls this; it owns the HTTP side (auth, parsing, errors)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing import costs, histogram, peaks, stats
from billing.models import COUNTER_FIELDS, Metric, UsageMinute

MAX_MINUTES = 31 * 24 * 60  # a month of rows at most per answer


def usage_report(room_id: int, start: datetime, end: datetime) -> dict[str, Any]:
    rows = {
        peaks.minute_of(r.pop("minute")): r
        for r in UsageMinute.objects.filter(room_id=room_id, minute__gte=start, minute__lt=end)
        .order_by("minute")
        .values("minute", *COUNTER_FIELDS)[:MAX_MINUTES]
    }
    # A silent minute with open sockets has no row: its peak is the level the
    # room's sockets held (billing/peaks.py), its counters zero.
    peak_of = peaks.load(start, end, [room_id]).of_room(room_id)
    silent = dict.fromkeys(COUNTER_FIELDS, 0)
    minutes = [
        {
            "minute": minute * 60_000,
            "peak_connections": peak_of.get(minute, 0),
            **{k: int(v) for k, v in rows.get(minute, silent).items()},
        }
        for minute in sorted(rows.keys() | peak_of.keys())[:MAX_MINUTES]
    ]
    usage, cost = costs.costs_between(start, end, [room_id])
    return {
        "from": int(start.timestamp() * 1000),
        "to": int(end.timestamp() * 1000),
        "minutes": minutes,
        "totals": {f: getattr(usage, f) for f in costs.usage_fields()},
        "latencyMs": {
            "processing": histogram.summary(stats.latency(start, end, Metric.PROCESSING, [room_id])),
            "roundTrip": histogram.summary(stats.latency(start, end, Metric.ROUND_TRIP, [room_id])),
        },
        "costUsd": cost.as_dict(),
    }
