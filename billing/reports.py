"""What ``GET /api/rooms/<slug>/usage?from=&to=`` returns (PROTOCOL.md section
6): per-minute counters, latency percentiles and estimated cost. The REST API
(rooms/api/) calls this; it owns the HTTP side (auth, parsing, errors)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing import costs, histogram, stats
from billing.models import COUNTER_FIELDS, Metric, UsageMinute

MAX_MINUTES = 31 * 24 * 60  # a month of rows at most per answer


def usage_report(room_id: int, start: datetime, end: datetime) -> dict[str, Any]:
    rows = list(
        UsageMinute.objects.filter(room_id=room_id, minute__gte=start, minute__lt=end)
        .order_by("minute")
        .values("minute", "peak_connections", *COUNTER_FIELDS)[:MAX_MINUTES]
    )
    minutes = [
        {"minute": int(r.pop("minute").timestamp() * 1000), **{k: int(v) for k, v in r.items()}} for r in rows
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
