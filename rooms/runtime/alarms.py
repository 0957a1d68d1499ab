"""Durable alarms: the actor's view of them, and their rows.

A room kind sets alarms through its context (``room.set_alarm(at, name)``).
The actor keeps the room's alarms in memory (``AlarmBook``) and stages every
change; the changes commit in the same transaction as the next group commit,
so an alarm and the events or storage writes beside it become durable
together (the output gate covers alarms too).

Delivery (``dispatch.py``) claims a due row and hands an :class:`AlarmDue`
to the room's actor. The actor checks the row is still the one delivered
(same token, same attempt count), runs ``on_alarm``, then:

- success: the row is deleted in the commit that holds the handler's writes,
  unless the handler set the same alarm again (then the new setting stays);
- failure: the handler's staged writes are dropped, ``attempts`` grows and the
  next attempt is due after an exponential backoff; after ``ALARM_MAX_ATTEMPTS``
  the row is marked ``failed`` with the last error, for the admin.

Functions taking a ``room_id`` run on Django's database thread.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from django.db import connection
from django.db.models import Q
from django.db.models.expressions import Col
from django.utils import timezone

from rooms.conf import dorm_settings
from rooms.models import Alarm

# A name is what a kind chooses; "" is the default alarm.
MAX_NAME_CHARS = 64
# Stored with the failure, for the admin (the logs only carry the type).
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class AlarmEntry:
    due_at: datetime
    token: int


@dataclass(frozen=True, slots=True)
class AlarmWrite:
    """A staged change: ``set`` (upsert, new token) or ``delete`` (only ``token`` if given)."""

    op: Literal["set", "delete"]
    name: str
    due_at: datetime | None = None
    token: int | None = None


def new_token() -> int:
    return secrets.randbits(62)


def as_datetime(at: datetime | float | int) -> datetime:
    """A due time: an aware datetime, or Unix time in seconds."""
    if isinstance(at, datetime):
        if timezone.is_naive(at):
            raise ValueError("alarm time must be timezone-aware")
        return at
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise TypeError("alarm time must be a datetime or Unix seconds")
    return datetime.fromtimestamp(float(at), tz=UTC)


def check_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"alarm name must be a string of at most {MAX_NAME_CHARS} characters")
    return name


def backoff_seconds(failures: int) -> float:
    """Delay before the next attempt after ``failures`` failed ones (1, 2, 4, ... x base)."""
    base = float(dorm_settings.ALARM_RETRY_BASE_SECONDS)
    return min(base * 2 ** (failures - 1), float(dorm_settings.ALARM_RETRY_MAX_SECONDS))


class AlarmBook:
    """The room's alarms as its actor sees them: committed plus staged."""

    def __init__(self, entries: dict[str, AlarmEntry] | None = None) -> None:
        self.entries: dict[str, AlarmEntry] = dict(entries or {})
        self._staged: dict[str, AlarmWrite] = {}

    def get(self, name: str) -> datetime | None:
        entry = self.entries.get(name)
        return None if entry is None else entry.due_at

    def all(self) -> dict[str, datetime]:
        return {name: e.due_at for name, e in sorted(self.entries.items())}

    def set(self, name: str, due_at: datetime) -> None:
        token = new_token()
        self.entries[name] = AlarmEntry(due_at, token)
        self._staged[name] = AlarmWrite("set", name, due_at, token)

    def delete(self, name: str) -> None:
        self.entries.pop(name, None)
        self._staged[name] = AlarmWrite("delete", name)

    def delivered(self, name: str, token: int) -> None:
        """The delivered setting ran: forget it unless the handler set it again."""
        entry = self.entries.get(name)
        if entry is not None and entry.token == token:
            del self.entries[name]
        if name not in self._staged:
            self._staged[name] = AlarmWrite("delete", name, token=token)

    def has_writes(self) -> bool:
        return bool(self._staged)

    def take_writes(self) -> list[AlarmWrite]:
        staged, self._staged = self._staged, {}
        return list(staged.values())

    def snapshot(self) -> tuple[dict[str, AlarmEntry], dict[str, AlarmWrite]]:
        return dict(self.entries), dict(self._staged)

    def restore(self, saved: tuple[dict[str, AlarmEntry], dict[str, AlarmWrite]]) -> None:
        self.entries, self._staged = dict(saved[0]), dict(saved[1])


# -- rows (database thread) ---------------------------------------------------------


def load_alarms(room_id: int) -> dict[str, AlarmEntry]:
    """The room's scheduled alarms (every wake reads them): plain SQL built
    once, its ``due_at`` converted as the ORM would (SQLite stores text);
    through the ORM, building the query cost most of ~300 us of the
    database thread (docs/performance.md, "Fifteenth round")."""
    sql, due_at_from_db = _load_alarms_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, [room_id, Alarm.SCHEDULED])
        rows = cursor.fetchall()
    return {name: AlarmEntry(due_at_from_db(due_at), token) for name, due_at, token in rows}


@functools.cache
def _load_alarms_sql() -> tuple[str, Callable[[object], datetime]]:
    qn = connection.ops.quote_name
    table = qn(Alarm._meta.db_table)
    sql = (f"SELECT {qn('name')}, {qn('due_at')}, {qn('token')} FROM {table}"
           f" WHERE {qn('room_id')} = %s AND {qn('status')} = %s")
    field = Alarm._meta.get_field("due_at")
    column = Col(Alarm._meta.db_table, field)
    # What the ORM's compiler applies to the column: the backend's, then the field's.
    converters = connection.ops.get_db_converters(column) + field.get_db_converters(connection)

    def due_at_from_db(value: object) -> datetime:
        for convert in converters:
            value = convert(value, column, connection)
        return value  # type: ignore[return-value]

    return sql, due_at_from_db


def apply_alarm_writes(room_id: int, writes: list[AlarmWrite]) -> None:
    """Inside the group commit's transaction."""
    for w in writes:
        if w.op == "set":
            assert w.due_at is not None and w.token is not None
            Alarm.objects.update_or_create(
                room_id=room_id,
                name=w.name,
                defaults={
                    "due_at": w.due_at,
                    "next_attempt_at": w.due_at,
                    "claimed_until": None,
                    "token": w.token,
                    "status": Alarm.SCHEDULED,
                    "attempts": 0,
                    "last_error": "",
                },
            )
        else:
            rows = Alarm.objects.filter(room_id=room_id, name=w.name)
            if w.token is not None:
                rows = rows.filter(token=w.token)
            rows.delete()


def alarm_is_current(alarm_id: int, token: int, attempts: int) -> bool:
    """Is the delivered alarm still due as delivered (not run, re-set or deleted since)?"""
    return Alarm.objects.filter(pk=alarm_id, token=token, attempts=attempts, status=Alarm.SCHEDULED).exists()


def record_failure(alarm_id: int, token: int, attempts: int, error: str, now: datetime) -> tuple[int, datetime | None]:
    """Count a failed attempt; (attempts, next attempt or None when it is now ``failed``)."""
    failures = attempts + 1
    if failures >= int(dorm_settings.ALARM_MAX_ATTEMPTS):
        fields = {"status": Alarm.FAILED, "claimed_until": None}
        next_at = None
    else:
        next_at = now + timedelta(seconds=backoff_seconds(failures))
        fields = {"next_attempt_at": next_at, "claimed_until": None}
    Alarm.objects.filter(pk=alarm_id, token=token, attempts=attempts).update(
        attempts=failures, last_error=error[:MAX_ERROR_CHARS], updated_at=now, **fields
    )
    return failures, next_at


def due_filter(now: datetime, horizon: datetime) -> Q:
    """Scheduled, due by ``horizon``, and not claimed by a delivery still in time."""
    return Q(status=Alarm.SCHEDULED, next_attempt_at__lte=horizon) & (
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    )
