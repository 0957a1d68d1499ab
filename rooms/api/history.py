"""Reading a room's log page by page, by ``seq``.

The log is append-only and one actor commits it in ``seq`` order, so a
reader that sees event N sees every event before it: a cursor of "the last
seq I read" never skips or repeats an event however many are written between
two pages. Every query here is one index range scan (``(room, seq)``,
``(room, type, seq)``, ``(room, user_id, seq)``, the erase-target index), so a
page costs the same at seq 10 and at seq 10 million.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from django.db import connection

from rooms.models import Event

# (seq, type, user_id, payload_json, ts)
Row = tuple[int, str, str, str, int]

# Must match the expressions of the rooms_event_erase_target index
# (migration 0002) exactly, or the planner cannot use it.
_ERASED_SQL = {
    "sqlite": (
        "SELECT json_extract(payload, '$.seq'), seq FROM rooms_event "
        "WHERE room_id = %s AND type = 'erase' AND json_extract(payload, '$.seq') BETWEEN %s AND %s"
    ),
    "postgresql": (
        "SELECT ((payload::jsonb ->> 'seq')::bigint), seq FROM rooms_event "
        "WHERE room_id = %s AND type = 'erase' AND ((payload::jsonb ->> 'seq')::bigint) BETWEEN %s AND %s"
    ),
}


@dataclass(frozen=True, slots=True)
class Query:
    since: int | None
    before: int | None
    limit: int
    type: str | None = None
    user: str | None = None


def page(room_id: int, query: Query) -> list[Row]:
    """At most ``limit`` events: after ``since`` ascending, or before ``before`` newest first."""
    events = Event.objects.filter(room_id=room_id)
    if query.type is not None:
        events = events.filter(type=query.type)
    if query.user is not None:
        events = events.filter(user_id=query.user)
    if query.before is not None:
        events = events.filter(seq__lt=query.before).order_by("-seq")
    else:
        events = events.filter(seq__gt=query.since or 0).order_by("seq")
    return list(events.values_list("seq", "type", "user_id", "payload", "ts")[: query.limit])


def erased_by(room_id: int, lo: int, hi: int) -> dict[int, int]:
    """``{erased seq: seq of the erase}`` for events with lo <= seq <= hi.

    A tombstone is an ``erase`` event whose ``payload.seq`` names the erased
    event (the whiteboard's erase; history is never rewritten).
    """
    sql = _ERASED_SQL.get(connection.vendor)
    if sql is None:  # pragma: no cover - Dorm runs on SQLite and PostgreSQL only
        rows = Event.objects.filter(room_id=room_id, type="erase", seq__gt=lo).values_list("payload", "seq")
        found = ((orjson.loads(p).get("seq"), s) for p, s in rows)
        return {target: s for target, s in found if isinstance(target, int) and lo <= target <= hi}
    with connection.cursor() as cursor:
        cursor.execute(sql, [room_id, lo, hi])
        return {int(target): seq for target, seq in cursor.fetchall() if target is not None}


def latest_seq(room_id: int) -> int:
    last = Event.objects.filter(room_id=room_id).order_by("-seq").values_list("seq", flat=True).first()
    return last or 0


def as_json(rows: list[Row], erased: dict[int, int]) -> list[dict[str, Any]]:
    """Events in the broadcast frame's shape, with their tombstone mark."""
    out = []
    for seq, type_, user_id, payload, ts in rows:
        erase = erased.get(seq)
        out.append(
            {
                "seq": seq,
                "type": type_,
                "userId": user_id,
                "payload": orjson.loads(payload) if payload else None,
                "ts": ts,
                "tombstoned": erase is not None,
                "erasedBy": erase,
            }
        )
    return out
