"""Read-side queries shared by the admin, the ops dashboard and /metrics.

Everything here reads the flushed rows (so it lags by up to one flush
interval) and merges histograms by adding bucket counts.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Sum
from django.db.models.functions import Length
from django.utils import timezone

from billing import costs, histogram, peaks
from billing.conf import billing_settings
from billing.models import LatencyBucket, Metric, OpsCount, UsageMinute


def last_minute(now: datetime) -> datetime:
    """Start of the last complete minute."""
    return now.replace(second=0, microsecond=0) - timedelta(minutes=1)


def latency(
    start: datetime, end: datetime, metric: int = Metric.PROCESSING, room_ids: list[int] | None = None
) -> dict[int, int]:
    rows = LatencyBucket.objects.filter(minute__gte=start, minute__lt=end, metric=metric)
    if room_ids is not None:
        rows = rows.filter(room_id__in=room_ids)
    return {b: int(n) for b, n in rows.values("bucket").annotate(n=Sum("count")).values_list("bucket", "n")}


def latency_by_room(start: datetime, end: datetime, metric: int = Metric.PROCESSING) -> dict[int, dict[int, int]]:
    rows = (
        LatencyBucket.objects.filter(minute__gte=start, minute__lt=end, metric=metric)
        .values("room_id", "bucket")
        .annotate(n=Sum("count"))
        .values_list("room_id", "bucket", "n")
    )
    out: dict[int, dict[int, int]] = defaultdict(dict)
    for room_id, b, n in rows:
        out[room_id][b] = int(n)
    return out


def active_rooms(start: datetime, end: datetime) -> set[int]:
    """Rooms with usage or an open connection in [start, end)."""
    used = set(UsageMinute.objects.filter(minute__gte=start, minute__lt=end).values_list("room_id", flat=True).distinct())
    return used | peaks.load(start, end).rooms()


def latency_series(start: datetime, end: datetime, room_ids: list[int] | None = None) -> dict[datetime, dict[int, int]]:
    rows = LatencyBucket.objects.filter(minute__gte=start, minute__lt=end, metric=Metric.PROCESSING)
    if room_ids is not None:
        rows = rows.filter(room_id__in=room_ids)
    out: dict[datetime, dict[int, int]] = defaultdict(dict)
    for minute, b, n in rows.values("minute", "bucket").annotate(n=Sum("count")).values_list("minute", "bucket", "n"):
        out[minute][b] = int(n)
    return out


def usage_series(start: datetime, end: datetime, room_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Per minute: messages in/out, connections (sum of rooms' peaks), p50/p99."""
    rows = UsageMinute.objects.filter(minute__gte=start, minute__lt=end)
    if room_ids is not None:
        rows = rows.filter(room_id__in=room_ids)
    per_minute = {
        r["minute"]: r
        for r in rows.values("minute").annotate(messages_in=Sum("messages_in"), messages_out=Sum("messages_out"))
    }
    room_peaks = peaks.load(start, end, room_ids)
    connections = room_peaks.total_by_minute()
    lat = latency_series(start, end, room_ids)
    series = []
    minute = start
    while minute < end:
        r = per_minute.get(minute, {})
        h = lat.get(minute, {})
        i = peaks.minute_of(minute) - room_peaks.first
        series.append(
            {
                "t": int(minute.timestamp()),
                "messages_in": int(r.get("messages_in") or 0),
                "messages_out": int(r.get("messages_out") or 0),
                "connections": connections[i] if 0 <= i < len(connections) else 0,
                "p50": histogram.percentile(h, 0.5),
                "p99": histogram.percentile(h, 0.99),
            }
        )
        minute += timedelta(minutes=1)
    return series


def storage_by_room() -> dict[int, int]:
    from rooms.models import Event, Snapshot, StoredValue

    out: dict[int, int] = defaultdict(int)
    for model, column in ((Event, "payload"), (Snapshot, "state"), (StoredValue, "value")):
        for room_id, n in model.objects.values("room_id").annotate(n=Sum(Length(column))).values_list("room_id", "n"):
            out[room_id] += int(n or 0)
    return out


def room_costs(start: datetime, end: datetime, prices: dict[str, Decimal] | None = None) -> dict[int, costs.Costs]:
    """Each room's costs over [start, end), for rooms with usage in it."""
    from billing.models import COUNTER_FIELDS

    prices = prices or costs.load_prices()
    seconds = Decimal(int((end - start).total_seconds()))
    storage = storage_by_room()
    rows = (
        UsageMinute.objects.filter(minute__gte=start, minute__lt=end)
        .values("room_id")
        .annotate(**{f: Sum(f) for f in COUNTER_FIELDS})
    )
    by_room = {r["room_id"]: r for r in rows}
    room_peaks = peaks.load(start, end).max_by_room()
    out = {}
    # A room with open sockets and no traffic has no usage row but a peak.
    for room_id in by_room.keys() | room_peaks.keys():
        r = by_room.get(room_id, {})
        usage = costs.Usage(peak_connections=room_peaks.get(room_id, 0), **{f: int(r.get(f) or 0) for f in COUNTER_FIELDS})
        out[room_id] = costs.compute(usage, storage.get(room_id, 0), seconds, prices)
    return out


def ops_counts(start: datetime, end: datetime) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"close": {}, "error": {}}
    rows = OpsCount.objects.filter(minute__gte=start, minute__lt=end).values("what", "code").annotate(n=Sum("count"))
    for r in rows:
        out.setdefault(r["what"], {})[r["code"]] = int(r["n"])
    return out


def latency_alert(now: datetime | None = None) -> dict[str, Any]:
    """The alert signal: median round trip of long sessions over the window."""
    now = now or timezone.now()
    start = now - timedelta(minutes=int(billing_settings.ALERT_WINDOW_MINUTES))
    h = latency(start, now, Metric.ROUND_TRIP_LONG)
    median = histogram.percentile(h, 0.5)
    threshold = float(billing_settings.LATENCY_ALERT_MS)
    state = "no_data" if median is None else ("firing" if median > threshold else "ok")
    return {"state": state, "median_ms": median, "threshold_ms": threshold, "samples": sum(h.values())}


def dashboard(now: datetime | None = None) -> dict[str, Any]:
    """Everything /ops/ shows, as JSON-ready values."""
    from rooms.models import Room

    now = now or timezone.now()
    prices = costs.load_prices()
    lm = last_minute(now)
    hour_ago = lm - timedelta(minutes=59)
    # The last hour and the current minute (partial: counted up to the last flush).
    series = usage_series(hour_ago, lm + timedelta(minutes=2))
    latest = series[-2]
    active = len(active_rooms(lm - timedelta(minutes=1), now))
    hour_latency = histogram.summary(latency(hour_ago, lm + timedelta(minutes=2)))
    month = costs.month_start(now)
    today = costs.day_start(now)
    _, month_cost = costs.costs_between(month, now, None, prices)
    _, today_cost = costs.costs_between(today, now, None, prices)
    per_room = room_costs(month, now, prices)
    slugs = dict(Room.objects.filter(pk__in=list(per_room)).values_list("pk", "slug"))
    top_cost = sorted(per_room.items(), key=lambda kv: kv[1].durable_objects.total, reverse=True)[:10]
    by_room_latency = latency_by_room(hour_ago, lm + timedelta(minutes=2))
    lat_slugs = dict(Room.objects.filter(pk__in=list(by_room_latency)).values_list("pk", "slug"))
    top_latency = sorted(
        ((rid, histogram.summary(h)) for rid, h in by_room_latency.items()),
        key=lambda kv: kv[1]["p99"] or 0,
        reverse=True,
    )[:10]
    return {
        "now": int(now.timestamp()),
        "active_rooms": active,
        "connections": latest["connections"],
        "messages_per_second": round(latest["messages_in"] / 60, 2),
        "deliveries_per_second": round(latest["messages_out"] / 60, 2),
        "latency_hour": hour_latency,
        "series": series,
        "ops": ops_counts(now - timedelta(hours=24), now + timedelta(minutes=1)),
        "cost_today": today_cost.as_dict(),
        "cost_month": month_cost.as_dict(),
        "top_rooms_by_cost": [
            {"room": slugs.get(rid, str(rid)), "here": f"{c.here.total:.6f}",
             "durable_objects": f"{c.durable_objects.total:.6f}", "hosted": f"{c.hosted.total:.6f}"}
            for rid, c in top_cost
        ],
        "top_rooms_by_latency": [
            {"room": lat_slugs.get(rid, str(rid)), "p50": s["p50"], "p99": s["p99"], "count": s["count"]}
            for rid, s in top_latency
        ],
        "alert": latency_alert(now),
    }
