"""Writing connection spans (``billing.models.ConnectionSpan``).

A span is this process's count of a room's open connections, held from one
minute until the count changes. The flush writes the changes the meter found
(``Meter.span_changes``); a clean stop closes every span of the process; the
presence sweep closes the spans of a process that stopped beating, at its last
beat (``close_gone_process``, a receiver of ``presence.signals.process_gone``).

Every write is idempotent, so a flush that failed is simply tried again: a
change closes the room's open span of this process at the new level's first
minute and opens the new one there (or, when an earlier part of the same minute
already opened one there, sets its level; a level of 0 opens nothing).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Value
from django.db.models.functions import Greatest

from billing.models import ConnectionSpan
from rooms.models import Room

log = logging.getLogger("dorm.billing")


def _sql() -> tuple[str, str, str]:
    qn = connection.ops.quote_name
    table = qn(ConnectionSpan._meta.db_table)
    room_id = f"(SELECT r.{qn('id')} FROM {qn(Room._meta.db_table)} r WHERE r.{qn('slug')} = %s)"
    process, since, until, connections = qn("process"), qn("since"), qn("until"), qn("connections")
    close = (
        f"UPDATE {table} SET {until} = %s WHERE {process} = %s AND {until} IS NULL AND {since} < %s "
        f"AND {qn('room_id')} = {room_id}"
    )
    # SQLite reads ON CONFLICT after INSERT ... SELECT only when the SELECT has a WHERE.
    open_ = (
        f"INSERT INTO {table} ({qn('room_id')}, {process}, {since}, {until}, {connections}) "
        f"SELECT r.{qn('id')}, %s, %s, NULL, %s FROM {qn(Room._meta.db_table)} r WHERE r.{qn('slug')} = %s "
        f"ON CONFLICT ({qn('room_id')}, {process}, {since}) DO UPDATE SET {until} = NULL, "
        f"{connections} = excluded.{connections}"
    )
    drop = f"DELETE FROM {table} WHERE {process} = %s AND {since} = %s AND {qn('room_id')} = {room_id}"
    return close, open_, drop


def _rounds(changes: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """Split the changes so that no room is changed twice in one round: each
    round's statements run as batches, and a room's changes must stay in order."""
    rounds: list[list[tuple[str, int, int]]] = []
    depth: dict[str, int] = {}
    for change in changes:
        i = depth.get(change[0], 0)
        depth[change[0]] = i + 1
        if i == len(rounds):
            rounds.append([])
        rounds[i].append(change)
    return rounds


def write_changes(cursor: Any, process: str, changes: list[tuple[str, int, int]], minute_start: Any) -> None:
    """Apply (room, first minute at the level, level) changes, in the caller's
    transaction. ``minute_start(minute)`` gives the database value of a minute."""
    close, open_, drop = _sql()
    for batch in _rounds(changes):
        at = [(minute_start(minute), room, level) for room, minute, level in batch]
        cursor.executemany(close, [(t, process, t, room) for t, room, _ in at])
        opened = [(process, t, level, room) for t, room, level in at if level > 0]
        if opened:
            cursor.executemany(open_, opened)
        dropped = [(process, t, room) for t, room, level in at if level <= 0]
        if dropped:
            cursor.executemany(drop, dropped)


def close_process(process: str, until: datetime) -> int:
    """Close every open span of ``process`` at ``until`` (a span never ends
    before it began). Returns how many were closed."""
    return ConnectionSpan.objects.filter(process=process, until__isnull=True).update(
        until=Greatest("since", Value(until))
    )


def minute_after(at: datetime) -> datetime:
    """The start of the minute after the one ``at`` falls in: a span that held
    at ``at`` covers that minute."""
    return at.replace(second=0, microsecond=0) + timedelta(minutes=1)


def close_gone_process(sender: Any, process: str, last_beat: datetime, **kwargs: Any) -> None:
    """``presence.signals.process_gone``: the process's sockets went with it."""
    n = close_process(process, minute_after(last_beat))
    if n:
        log.warning("connection spans closed process=%s spans=%d", process, n)
