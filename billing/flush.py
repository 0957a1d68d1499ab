"""Add what the meter counted to the database: once a minute per process
(nothing for a minute in which nothing happened: silent rooms' open sockets
are billed through their connection spans, ``billing/spans.py``).

Every write is an upsert that adds (``ON CONFLICT ... DO UPDATE SET n = n +
excluded.n``; the peak takes the larger), so N processes flushing the same
room and minute add up, and a process may flush a minute in several parts.
One ``executemany`` per table per flush, whatever the traffic.

CPU: the process's CPU time since the previous flush (``time.process_time``,
every thread) is shared among the rooms flushed by their work
(``Counters.work``); CPU of a flush interval without any room work is not
attributed to a room.

``flush_now`` is the plain function a scheduler (Celery beat, the in-process
scheduler) can call; until one exists, ``ensure_flusher`` starts a small
periodic task in each ASGI process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async
from django.db import connection, transaction

from billing import spans
from billing.conf import billing_settings
from billing.meter import Counters, Meter, meter
from billing.models import COUNTER_FIELDS, LatencyBucket, Metric, OpsCount, UsageMinute
from presence.process import PROCESS_ID
from rooms.models import Room

log = logging.getLogger("dorm.billing")

_last_cpu = time.process_time()


def minute_start(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, tz=UTC)


def _by_slug(table: str, columns: list[str], conflict: str) -> str:
    """``INSERT INTO table (room_id, columns...)`` of the room whose slug is the
    last parameter (no row when there is no such room), upserting on ``conflict``.

    The room's id is looked up by the statement itself: the flush sends slugs,
    never a separate query for 10,000 ids (the ORM's ``slug IN (...)`` of
    10,000 names was most of an idle server's flush; docs/performance.md).
    """
    qn = connection.ops.quote_name
    room_table = qn(Room._meta.db_table)
    values = ", ".join(["%s"] * len(columns))
    # SQLite reads ON CONFLICT after INSERT ... SELECT only when the SELECT has a WHERE.
    return (
        f"INSERT INTO {table} ({qn('room_id')}, {', '.join(qn(c) for c in columns)}) "
        f"SELECT r.{qn('id')}, {values} FROM {room_table} r WHERE r.{qn('slug')} = %s "
        f"ON CONFLICT {conflict}"
    )


def _usage_sql() -> str:
    qn = connection.ops.quote_name
    table = qn(UsageMinute._meta.db_table)
    greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
    updates = [f"{qn(f)} = {table}.{qn(f)} + excluded.{qn(f)}" for f in COUNTER_FIELDS]
    updates.append(
        f"{qn('peak_connections')} = {greatest}({table}.{qn('peak_connections')}, excluded.{qn('peak_connections')})"
    )
    return _by_slug(table, ["minute", "peak_connections", *COUNTER_FIELDS],
                    f"({qn('room_id')}, {qn('minute')}) DO UPDATE SET {', '.join(updates)}")


def _adds_count(table: str, keys: tuple[str, ...]) -> str:
    """The upsert's conflict clause for a counted row: a new key inserts, an
    existing one adds its count."""
    return f"({', '.join(keys)}) DO UPDATE SET count = {table}.count + excluded.count"


def _latency_sql() -> str:
    table = connection.ops.quote_name(LatencyBucket._meta.db_table)
    return _by_slug(table, ["minute", "metric", "bucket", "count"],
                    _adds_count(table, ("room_id", "minute", "metric", "bucket")))


def _ops_sql() -> str:
    table = connection.ops.quote_name(OpsCount._meta.db_table)
    keys = ("minute", "what", "code")
    return f"INSERT INTO {table} ({', '.join(keys)}, count) VALUES (%s, %s, %s, %s) ON CONFLICT {_adds_count(table, keys)}"


def apportion_cpu(taken: list[tuple[str, Counters]], cpu_us: int) -> None:
    work = [c.work() for _, c in taken]
    total = sum(work)
    if total <= 0 or cpu_us <= 0:
        return
    for (_, c), w in zip(taken, work):
        c.cpu_us += cpu_us * w // total


def write(
    taken: list[tuple[str, Counters]],
    ops: list[tuple[int, dict[tuple[str, str], int]]],
    span_changes: list[tuple[str, int, int]] | None = None,
) -> int:
    """Upsert the counters and apply the connection-span changes, in one
    transaction; returns the number of usage rows written.

    A room that does not exist (refused before it was created) matches no
    row: nothing to bill."""
    adapt = connection.ops.adapt_datetimefield_value
    minutes: dict[int, Any] = {}  # one adapted datetime per minute, not per room

    def minute_value(m: int) -> Any:
        value = minutes.get(m)
        if value is None:
            value = minutes[m] = adapt(minute_start(m))
        return value

    usage = []
    latency = []
    fields = COUNTER_FIELDS
    for room, c in taken:
        minute = minute_value(c.minute)
        usage.append((minute, c.peak_connections, *[getattr(c, f) for f in fields], room))
        for metric, hist in ((Metric.PROCESSING, c.processing), (Metric.ROUND_TRIP, c.round_trip),
                             (Metric.ROUND_TRIP_LONG, c.round_trip_long)):
            if hist:
                latency.extend((minute, int(metric), b, n, room) for b, n in hist.items())
    op_rows = [(adapt(minute_start(m)), what, code, n) for m, counts in ops for (what, code), n in counts.items()]
    written = 0
    with transaction.atomic():
        with connection.cursor() as cursor:
            if usage:
                cursor.executemany(_usage_sql(), usage)
                written = max(0, cursor.rowcount)
            if latency:
                cursor.executemany(_latency_sql(), latency)
            if op_rows:
                cursor.executemany(_ops_sql(), op_rows)
            if span_changes:
                spans.write_changes(cursor, PROCESS_ID, span_changes, minute_value)
    return written


def _take(m: Meter) -> tuple[list[tuple[str, Counters]], list[Any], list[tuple[str, int, int]]]:
    """What the meter counted since the last flush, with its share of CPU."""
    global _last_cpu
    taken, ops = m.take()
    now_cpu = time.process_time()
    apportion_cpu(taken, int((now_cpu - _last_cpu) * 1_000_000))
    _last_cpu = now_cpu
    return taken, ops, m.span_changes(taken)


def _failed(m: Meter, taken: list[tuple[str, Counters]], changes: list[tuple[str, int, int]]) -> None:
    # Counts are lost rather than re-added twice: the upsert may have partly
    # run. Span changes are idempotent: the next flush writes them again.
    # Logged with sizes only.
    log.exception("usage flush failed rooms=%d span_changes=%d", len(taken), len(changes))
    m.span_failed(changes)


def flush_sync(m: Meter | None = None) -> int:
    """Flush the meter from a thread without an event loop (beat task, shell)."""
    m = m or meter
    taken, ops, changes = _take(m)
    if not taken and not ops and not changes:
        return 0
    try:
        return write(taken, ops, changes)
    except Exception:
        _failed(m, taken, changes)
        return 0


_db_write = database_sync_to_async(write)


async def flush_now() -> int:
    """Flush this process's counters (the plain function schedulers call)."""
    taken, ops, changes = _take(meter)
    if not taken and not ops and not changes:
        return 0
    try:
        rows = await _db_write(taken, ops, changes)
    except Exception:
        _failed(meter, taken, changes)
        return 0
    log.debug("usage flushed rows=%d span_changes=%d", rows, len(changes))
    return rows


# -- the per-process periodic task ---------------------------------------------------

_task: asyncio.Task[None] | None = None


def ensure_flusher() -> None:
    """Start this process's flush loop if it is not running in this event loop."""
    global _task
    if not meter.enabled:
        return
    loop = asyncio.get_running_loop()
    if _task is not None and not _task.done() and _task.get_loop() is loop:
        return
    _task = loop.create_task(_flush_loop(), name="billing-flush")


async def _flush_loop() -> None:
    interval = float(billing_settings.FLUSH_SECONDS)
    next_flush = time.time() + interval
    while True:
        now = time.time()
        next_minute = (now // 60 + 1) * 60
        await asyncio.sleep(max(0.0, min(next_flush, next_minute) - now) + 0.001)
        meter.rotate()
        if time.time() >= next_flush:
            next_flush = time.time() + interval
            try:
                await flush_now()
                # Budgets are checked against what was just written.
                from billing import budgets

                await budgets.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("billing periodic task failed")


async def stop_flusher(flush: bool = True) -> None:
    """Stop the loop (shutdown, tests) and write what is left."""
    global _task
    task, _task = _task, None
    if task is not None and not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
    if flush:
        await flush_now()
        # The process's sockets go with it: its connection levels end with
        # the current minute.
        try:
            await database_sync_to_async(spans.close_process)(PROCESS_ID, spans.minute_after(datetime.now(UTC)))
            meter.spans_closed()
        except Exception:
            log.exception("closing connection spans failed")
