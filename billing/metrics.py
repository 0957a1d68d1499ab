"""Prometheus exposition of the flushed counters and histograms.

Cluster-wide totals read from the database (every process's flushes), so a
scrape of any process gives the same numbers; the ``dorm_process_*`` gauges
alone describe the process that answers (its event loop's tasks, live actors
and sockets: what the leak tests watch). Labels are bounded: close codes
(the protocol's list plus ``other``), error reasons (the protocol's list),
cost providers (three); never a room or user id.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from itertools import accumulate

from django.db.models import Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from billing import costs, histogram, peaks, stats
from billing.meter import KEEPALIVE_OP
from billing.models import COUNTER_FIELDS, LatencyBucket, Metric, OpsCount, UsageMinute

# Exported bucket bounds: every fourth bound (each doubling), 0.05 ms to ~52 s.
EXPORTED = list(range(0, histogram.BUCKETS, histogram.STEPS_PER_DOUBLING))

HELP = {
    "connections_opened": "Connections that joined a room",
    "connections_closed": "Connections that left a room",
    "messages_in": "Frames received from clients (keepalives are dorm_keepalives)",
    "bytes_in": "Bytes of frames received from clients",
    "messages_out": "Fan-out deliveries to sockets",
    "bytes_out": "Bytes of fan-out deliveries",
    "events_written": "Durable events committed",
    "rows_read": "Database rows read by room actors",
    "rows_written": "Database rows written by room actors",
    "storage_bytes_written": "Bytes of payloads and storage values written",
    "actor_awake_ms": "Milliseconds room actors were awake",
    "alarms_fired": "Alarms delivered to rooms",
    "cpu_us": "Process CPU microseconds attributed to rooms",
}


# This process only (rooms/runtime/registry.py: process_gauges).
PROCESS_GAUGES = {
    "asyncio_tasks": "asyncio tasks on this process's event loop",
    "live_actors": "Room actors awake in this process",
    "connections": "WebSockets open on this process",
    "rooms_with_connections": "Rooms with at least one socket on this process",
    "slow_clients_closed": "Sockets this process closed with 4408 (too slow) since it started",
    "keepalives_at_edge": "Keepalives this process answered in the server's read, without waking their consumer, since it started",
    "presence_churning_connections": "Connections reached by the presence updates of this process's rooms churning now"
    " (divided by DORM_PRESENCE_PROCESS_FANOUT_PER_SECOND: the seconds between their updates, when over the base window)",
    "commits_on_loop": "Group commits of events alone this process sent from its event loop since it started"
    " (PostgreSQL, DORM_DB_COMMITS_ON_LOOP; the rest go through Django's database thread)",
}


def _histogram(name: str, doc: str, counts: dict[int, int]) -> HistogramMetricFamily:
    buckets = []
    cumulative = 0
    for i in EXPORTED:
        cumulative = sum(n for b, n in counts.items() if b <= i)
        buckets.append((repr(histogram.BOUNDS_MS[i] / 1000), cumulative))
    total = sum(counts.values())
    buckets.append(("+Inf", total))
    # The sum is estimated from bucket upper bounds (Dorm stores counts only).
    estimate = sum(histogram.upper_ms(b) / 1000 * n for b, n in counts.items() if b < histogram.OVERFLOW)
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=estimate)


class DormCollector(Collector):
    def collect(self) -> Iterator:
        totals = UsageMinute.objects.aggregate(**{f: Sum(f) for f in COUNTER_FIELDS})
        for f in COUNTER_FIELDS:
            yield CounterMetricFamily(f"dorm_{f}", HELP[f], value=int(totals[f] or 0))
        for metric, name, doc in (
            (Metric.PROCESSING, "dorm_processing_latency_seconds", "Server processing time, frame received to fan-out written"),
            (Metric.ROUND_TRIP, "dorm_client_round_trip_seconds", "Round trip reported by clients in ping"),
        ):
            counts = {
                b: int(n)
                for b, n in LatencyBucket.objects.filter(metric=metric)
                .values("bucket")
                .annotate(n=Sum("count"))
                .values_list("bucket", "n")
            }
            yield _histogram(name, doc, counts)
        closes = CounterMetricFamily("dorm_closes", "WebSocket closes and refusals by close code", labels=["code"])
        errors = CounterMetricFamily("dorm_errors", "Error frames sent, by reason", labels=["reason"])
        keepalives = CounterMetricFamily(
            "dorm_keepalives", "Keepalive frames received (ping, heartbeat; not in messages_in)", labels=["type"]
        )
        families = {"close": closes, "error": errors, KEEPALIVE_OP: keepalives}
        for what, code, n in OpsCount.objects.values("what", "code").annotate(n=Sum("count")).values_list("what", "code", "n"):
            family = families.get(what)
            if family is not None:
                family.add_metric([code], int(n))
        yield closes
        yield errors
        yield keepalives
        now = timezone.now()
        board_minute = stats.last_minute(now)
        after = board_minute + timedelta(minutes=1)
        yield GaugeMetricFamily(
            "dorm_active_rooms",
            "Rooms with usage or an open connection in the last complete minute",
            value=len(stats.active_rooms(board_minute, after)),
        )
        yield GaugeMetricFamily(
            "dorm_connections",
            "Connections in the last complete minute (sum of rooms' peaks)",
            value=sum(peaks.load(board_minute, after).total_by_minute()),
        )
        _, month = costs.costs_between(costs.month_start(now), now)
        cost = GaugeMetricFamily("dorm_cost_month_usd", "Cost of this month so far, by provider", labels=["provider"])
        for provider in ("here", "durable_objects", "hosted"):
            cost.add_metric([provider], float(month.basis(provider)))
        yield cost
        alert = stats.latency_alert(now)
        yield GaugeMetricFamily("dorm_latency_alert_firing", "1 when the latency alert fires", value=int(alert["state"] == "firing"))
        yield GaugeMetricFamily(
            "dorm_latency_alert_median_ms",
            "Median client round trip of sessions older than 30 s (NaN: no data)",
            value=float("nan") if alert["median_ms"] is None else alert["median_ms"],
        )
        yield GaugeMetricFamily("dorm_latency_alert_threshold_ms", "The alert's threshold", value=alert["threshold_ms"])
        from rooms.runtime.registry import event_loop_kind, process_gauges

        gauges = process_gauges()
        if gauges is not None:
            for key, doc in PROCESS_GAUGES.items():
                yield GaugeMetricFamily(f"dorm_process_{key}", doc, value=gauges[key])
        yield from _gc_families()
        loop_kind = event_loop_kind()
        if loop_kind is not None:
            loop = GaugeMetricFamily(
                "dorm_process_event_loop", "1 for the event loop this process runs on (DORM_EVENT_LOOP)", labels=["loop"]
            )
            loop.add_metric([loop_kind], 1)
            yield loop


def _gc_families() -> Iterator:
    """This process's garbage collections (``rooms/runtime/gc_freeze.py``),
    once a server installed the watch."""
    from rooms.runtime import gc_freeze

    watch = gc_freeze.watch
    if watch is None:
        return
    pauses = HistogramMetricFamily(
        "dorm_process_gc_pause_seconds",
        "Garbage collections of this process by generation (2: full), each a pause of every room in it",
        labels=["generation"],
    )
    bounds = [repr(b) for b in gc_freeze.PAUSE_BOUNDS] + ["+Inf"]
    for generation, counts in enumerate(watch.pauses):
        pauses.add_metric([str(generation)], list(zip(bounds, accumulate(counts))), sum_value=watch.pause_seconds[generation])
    yield pauses
    frozen, thaws, thaw_collected = watch.counts()
    yield GaugeMetricFamily(
        "dorm_process_gc_frozen_objects",
        "Objects this process froze out of full collections (what survived the last one; DORM_GC_THAW_SECONDS)",
        value=frozen,
    )
    yield GaugeMetricFamily(
        "dorm_process_gc_thaw_interval_seconds",
        "How often this process collects everything, frozen objects too (DORM_GC_THAW_SECONDS); 0: it freezes nothing",
        value=watch.thaw_seconds,
    )
    yield CounterMetricFamily("dorm_process_gc_thaws", "Full collections of everything, frozen objects too", value=thaws)
    yield CounterMetricFamily(
        "dorm_process_gc_thaw_collected_objects",
        "Objects those freed: cycles among frozen objects, held until a thaw",
        value=thaw_collected,
    )


def exposition() -> bytes:
    from prometheus_client import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DormCollector())
    return generate_latest(registry)
