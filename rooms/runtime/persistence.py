"""The actor's database work: load, group commit, snapshots, storage, runs.

All functions here are synchronous and run on Django's database thread
(``database_sync_to_async``); the actor awaits them. The group commit writes
every durable event of a batch and the batch's storage writes in one
transaction, the events with multi-row ``INSERT`` statements: model instances
would cost more than the insert itself at thousands of events per second.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from rooms.models import ActorRun, Event, Room, Snapshot, StoredValue
from rooms.runtime import db_watchdog
from rooms.runtime.alarms import AlarmEntry, AlarmWrite, apply_alarm_writes, load_alarms

# (room_id, seq, type, user_id, client_id, payload_json, ts)
EventRow = tuple[int, int, str, str, str, str, int]
# (seq, type, user_id, client_id, payload_json, ts)
LogRow = tuple[int, str, str, str, str, int]

PROCESS_NAME = f"{socket.gethostname()}:{os.getpid()}"


class RoomNotFound(LookupError):
    pass


@dataclass(slots=True)
class LoadedRoom:
    room_id: int
    kind: str
    settings: dict
    private: bool
    max_connections: int | None
    snapshot_seq: int
    snapshot_state: str | None
    tail: list[LogRow] = field(default_factory=list)
    last_seq: int = 0
    # (user_id, client_id, seq, ts) of recent events that carried a client id.
    recent_ids: list[tuple[str, str, int, int]] = field(default_factory=list)


def load_room(slug: str, *, create_kind: str | None, ids_since_ms: int, ids_limit: int) -> LoadedRoom:
    """The room, its latest snapshot and the log after it, and recent client ids.

    ``create_kind``: create the room with this kind when it does not exist
    (None: raise :class:`RoomNotFound`).
    """
    sql = _load_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql.room, [slug])
        found = cursor.fetchone()
        if found is None:
            if create_kind is None:
                raise RoomNotFound(slug)
            Room.objects.get_or_create(slug=slug, defaults={"kind": create_kind})
            cursor.execute(sql.room, [slug])
            found = cursor.fetchone()
        room_id, kind, settings_json, private, max_connections = found
        for _attempt in range(5):
            cursor.execute(sql.snapshot, [room_id])
            snap = cursor.fetchone()
            snapshot_seq, snapshot_state = snap if snap else (0, None)
            cursor.execute(sql.tail, [room_id, snapshot_seq])
            tail = cursor.fetchall()
            # Retention (rooms/retention.py) may have written a newer snapshot and
            # deleted events between the two reads: a tail that does not start
            # right after the snapshot is read again, never folded with a hole.
            if not tail or tail[0][0] == snapshot_seq + 1:
                break
        last_seq = tail[-1][0] if tail else snapshot_seq
        if not tail:
            # Retention may have left a snapshot newer than any event, or events
            # newer than any snapshot may not exist: take the larger.
            cursor.execute(sql.max_seq, [room_id])
            last_seq = max(snapshot_seq, cursor.fetchone()[0] or 0)
        cursor.execute(sql.recent_ids, [room_id, ids_since_ms, ids_limit])
        recent_ids = cursor.fetchall()
    recent_ids.reverse()
    return LoadedRoom(
        room_id=room_id,
        kind=kind,
        settings=_ROOM_SETTINGS.from_db_value(settings_json, None, connection) or {},
        private=bool(private),
        max_connections=max_connections,
        snapshot_seq=snapshot_seq,
        snapshot_state=snapshot_state,
        tail=tail,
        last_seq=last_seq,
        recent_ids=recent_ids,
    )


_ROOM_SETTINGS = Room._meta.get_field("settings")


@dataclass(slots=True)
class WokenRoom:
    loaded: LoadedRoom
    alarms: dict[str, AlarmEntry]
    run_id: int


def wake_room(slug: str, create_kind: str | None, ids_since_ms: int, ids_limit: int, woke_at: datetime) -> WokenRoom:
    """What a waking actor needs from the database, in one call of the
    database thread: the room (:func:`load_room`), its alarms, and its new
    ``ActorRun``. Each call is a hop to that thread and back (~130-230 us of
    CPU on its own; docs/performance.md, "Fifteenth round"): one instead of three."""
    loaded = load_room(slug, create_kind=create_kind, ids_since_ms=ids_since_ms, ids_limit=ids_limit)
    return WokenRoom(loaded, load_alarms(loaded.room_id), start_run(loaded.room_id, woke_at))


def sleep_room(room_id: int, snapshot: tuple[int, str] | None, run_id: int | None, awake_ms: int, reason: str) -> None:
    """A sleeping actor's writes in one call and one transaction (one
    fsync): its snapshot (``(seq, state)``, if it has events since the last)
    and the end of its ``ActorRun``. If the snapshot fails, the run stays
    open, as when they were two calls."""
    with transaction.atomic():
        if snapshot is not None:
            _write_snapshot(room_id, *snapshot)
        if run_id is not None:
            end_run(run_id, awake_ms, reason)


@dataclass(frozen=True, slots=True)
class _LoadSQL:
    room: str
    snapshot: str
    tail: str
    max_seq: str
    recent_ids: str


@functools.cache
def _load_sql() -> _LoadSQL:
    """A wake's five reads as plain SQL, built once: through the ORM they
    cost 1.1 ms of the database thread per wake, nearly all of it building
    the queries (an empty room; docs/performance.md, "Fourteenth round")."""
    qn = connection.ops.quote_name
    room, snapshot, event = (qn(m._meta.db_table) for m in (Room, Snapshot, Event))

    def cols(*names: str) -> str:
        return ", ".join(qn(n) for n in names)

    seq, room_id, ts, client_id = qn("seq"), qn("room_id"), qn("ts"), qn("client_id")
    return _LoadSQL(
        room=f"SELECT {cols('id', 'kind', 'settings', 'private', 'max_connections')} FROM {room} WHERE {qn('slug')} = %s",
        snapshot=f"SELECT {cols('seq', 'state')} FROM {snapshot} WHERE {room_id} = %s ORDER BY {seq} DESC LIMIT 1",
        tail=(f"SELECT {cols('seq', 'type', 'user_id', 'client_id', 'payload', 'ts')} FROM {event}"
              f" WHERE {room_id} = %s AND {seq} > %s ORDER BY {seq}"),
        max_seq=f"SELECT MAX({seq}) FROM {event} WHERE {room_id} = %s",
        recent_ids=(f"SELECT {cols('user_id', 'client_id', 'seq', 'ts')} FROM {event}"
                    f" WHERE {room_id} = %s AND {ts} >= %s AND {client_id} <> '' ORDER BY {seq} DESC LIMIT %s"),
    )


def reload_room(slug: str, *, ids_since_ms: int, ids_limit: int) -> tuple[LoadedRoom, list]:
    """The room as :func:`load_room` reads it, and its alarms, in one transaction.

    A room recovering from a failed commit reads in a writing transaction:
    on SQLite (``BEGIN IMMEDIATE``) that takes the write lock, so the room
    comes back only when it can write again, not as soon as it can read.
    """
    with transaction.atomic():
        loaded = load_room(slug, create_kind=None, ids_since_ms=ids_since_ms, ids_limit=ids_limit)
        return loaded, load_alarms(loaded.room_id)


# Events per INSERT statement, within the database's limit on placeholders
# (Django's 999 for SQLite: 142 rows of seven). Above a few dozen rows a
# longer statement saves little more, and each row count is one cached
# statement text.
ROWS_PER_INSERT = 128
_EVENT_COLUMNS = ("room_id", "seq", "type", "user_id", "client_id", "payload", "ts")


@functools.cache
def _rows_per_insert() -> int:
    limit = connection.features.max_query_params
    return ROWS_PER_INSERT if limit is None else max(1, min(ROWS_PER_INSERT, limit // len(_EVENT_COLUMNS)))


@functools.cache
def insert_events_sql(rows: int) -> str:
    """``INSERT`` of ``rows`` events (``%s`` placeholders, row after row)."""
    qn = connection.ops.quote_name
    cols = ", ".join(qn(c) for c in _EVENT_COLUMNS)
    values = ", ".join(["(" + ", ".join(["%s"] * len(_EVENT_COLUMNS)) + ")"] * rows)
    return f"INSERT INTO {qn(Event._meta.db_table)} ({cols}) VALUES {values}"


# PostgreSQL: more events than this go as one ``COPY``. psycopg parses the
# text of every statement for its placeholders, and caches the result only
# for texts under 4 KiB: a 128-row ``INSERT`` (~4.5 KiB) was parsed again at
# each commit, ~3.7 ms of CPU, and its rows' values each adapted one by one
# (~30 us of CPU per event in all). ``COPY`` formats the rows in C: 0.9 ms
# for 128 events, 2.6 ms for 1,000 (docs/performance.md, "Nineteenth
# round"). Its fixed cost is a round trip more, so a few rows stay an INSERT.
COPY_FROM_ROWS = 8


@functools.cache
def on_postgresql() -> bool:
    """The database is PostgreSQL: big rounds of events go as one ``COPY``,
    and rounds of events alone on the event loop's connection (loop_commit)."""
    return connection.vendor == "postgresql"


@functools.cache
def copy_events_sql() -> str:
    qn = connection.ops.quote_name
    return f"COPY {qn(Event._meta.db_table)} ({', '.join(qn(c) for c in _EVENT_COLUMNS)}) FROM STDIN"


def _insert_events(rows: list[EventRow]) -> None:
    """``rows`` in one ``COPY`` (PostgreSQL, more than ``COPY_FROM_ROWS``), or
    in as few ``INSERT`` statements as the placeholder limit allows.

    One multi-row statement instead of ``executemany``: measured in-process,
    one commit of 50 events 733 -> 542 us on SQLite, 2.8 -> 2.1 ms on
    PostgreSQL (docs/performance.md, "Seventeenth round").
    """
    with connection.cursor() as cursor:
        if len(rows) > COPY_FROM_ROWS and on_postgresql():
            # psycopg's own cursor under Django's: Django's wrapper has no COPY.
            with connection.wrap_database_errors, cursor.cursor.copy(copy_events_sql()) as copy:
                for row in rows:
                    copy.write_row(row)
            return
        step = _rows_per_insert()
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            cursor.execute(insert_events_sql(len(chunk)), [value for row in chunk for value in row])


# commit_batch's arguments: room id, event rows, storage writes, alarm changes.
Batch = tuple[int, list[EventRow], dict[str, str | None], Sequence[AlarmWrite]]


def commit_batch(
    room_id: int, rows: list[EventRow], writes: dict[str, str | None], alarm_writes: Sequence[AlarmWrite] = ()
) -> None:
    """Append ``rows``, apply storage ``writes`` (None deletes) and alarm changes atomically."""
    _commit_together([(room_id, rows, writes, alarm_writes)])


def _commit_together(batches: list[Batch]) -> None:
    """Every batch of ``batches`` or none of them.

    Events alone, few enough for one ``INSERT`` or any number on PostgreSQL
    (a ``COPY``; what a room's messages are nearly always), go as that one
    statement outside any transaction block:
    a single statement is its own transaction in both databases, all rows or
    none, committed (and on SQLite with ``synchronous=FULL`` synced) before it
    returns. That spares ``BEGIN`` and ``COMMIT``: on PostgreSQL two of the
    three round trips of a commit (715 -> 387 us for one event), on SQLite
    two statements and Django's transaction bookkeeping (387 -> 310 us).
    """
    one = one_statement_rows(batches)
    # Only in autocommit: inside a transaction block (a caller's atomic) the
    # statement would be committed with it, or never.
    if one is not None and not connection.in_atomic_block and connection.get_autocommit():
        _insert_events(one)
        return
    rows = [row for _, batch_rows, _, _ in batches for row in batch_rows]
    with transaction.atomic():
        for room_id, _, _, alarm_writes in batches:
            if alarm_writes:
                apply_alarm_writes(room_id, list(alarm_writes))
        if rows:
            _insert_events(rows)
        for room_id, _, writes, _ in batches:
            _apply_writes(room_id, writes)


def one_statement_rows(batches: Sequence[Batch]) -> list[EventRow] | None:
    """The rows of a round of events alone that one statement takes (its own
    transaction: nearly every round of a room's messages): few enough for
    one ``INSERT``, or any number on PostgreSQL (``COPY``); None for a round
    that needs a transaction block."""
    if any(writes or alarm_writes for _, _, writes, alarm_writes in batches):
        return None
    rows = [row for _, batch_rows, _, _ in batches for row in batch_rows]
    if not rows:
        return None
    return rows if len(rows) <= _rows_per_insert() or on_postgresql() else None


def _apply_writes(room_id: int, writes: dict[str, str | None]) -> None:
    for key, value in writes.items():
        if value is None:
            StoredValue.objects.filter(room_id=room_id, key=key).delete()
        else:
            StoredValue.objects.update_or_create(room_id=room_id, key=key, defaults={"value": value})


def commit_batches(batches: list[Batch]) -> list[BaseException | None]:
    """Commit the batches of several rooms, each atomically; per batch, None or its error.

    All of them together (one fsync): the common case. If that fails,
    nothing of it stays, and each batch is retried on its own so that one
    room's failure (a stale writer's duplicate seq) is that room's alone.
    """
    try:
        _commit_together(batches)
        return [None] * len(batches)
    except Exception as exc:
        if len(batches) == 1 or db_watchdog.expired() or db_watchdog.is_unavailable(exc):
            # One batch: the error is its own. The database is gone or hangs:
            # retrying each batch would wait for it once per room.
            return [exc] * len(batches)
    results: list[BaseException | None] = []
    for batch in batches:
        try:
            _commit_together([batch])
        except Exception as exc:
            results.append(exc)
        else:
            results.append(None)
    return results


def log_after(room_id: int, since: int, upto: int) -> list[LogRow]:
    return list(
        Event.objects.filter(room_id=room_id, seq__gt=since, seq__lte=upto)
        .order_by("seq")
        .values_list("seq", "type", "user_id", "client_id", "payload", "ts")
    )


def save_snapshot(room_id: int, seq: int, state: str) -> None:
    """Store the state at ``seq``; thin out the room's older snapshots.

    The newest snapshot is what a waking actor loads; older ones are
    checkpoints for reading the state at a past seq (``api/timetravel.py``).
    A room snapshots on every hibernation with new events, so without
    thinning its rows would grow with every wake/hibernate cycle. The
    previous newest is dropped when it lies closer than
    ``SNAPSHOT_EVERY_EVENTS`` to the checkpoint before it: checkpoints stay
    about that many events apart, and the rows grow with the log, not with
    wake-ups. A snapshot already stored at ``seq`` is kept as it is.
    """
    with transaction.atomic():
        _write_snapshot(room_id, seq, state)


def _write_snapshot(room_id: int, seq: int, state: str) -> None:
    """:func:`save_snapshot`'s statements, inside the caller's transaction."""
    from rooms.conf import dorm_settings

    sql = _run_sql()
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql.snapshot_insert, [room_id, seq, state, now])
        cursor.execute(sql.snapshot_older, [room_id, seq])
        older = cursor.fetchall()
        if older:
            previous_id, previous_seq = older[0]
            checkpoint_seq = older[1][1] if len(older) > 1 else 0
            if previous_seq - checkpoint_seq < int(dorm_settings.SNAPSHOT_EVERY_EVENTS):
                cursor.execute(sql.snapshot_delete, [previous_id])


def stored_value(room_id: int, key: str) -> str | None:
    return StoredValue.objects.filter(room_id=room_id, key=key).values_list("value", flat=True).first()


def stored_values(room_id: int, prefix: str) -> list[tuple[str, str]]:
    return list(
        StoredValue.objects.filter(room_id=room_id, key__startswith=prefix).order_by("key").values_list("key", "value")
    )


def start_run(room_id: int, woke_at: datetime) -> int:
    sql = _run_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql.run_start, [room_id, PROCESS_NAME, connection.ops.adapt_datetimefield_value(woke_at)])
        if sql.run_start_returns_id:
            return int(cursor.fetchone()[0])
        return int(cursor.lastrowid)


def end_run(run_id: int, awake_ms: int, reason: str) -> None:
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(_run_sql().run_end, [now, awake_ms, reason, run_id])


@dataclass(frozen=True, slots=True)
class _RunSQL:
    run_start: str
    run_start_returns_id: bool
    run_end: str
    snapshot_insert: str
    snapshot_older: str
    snapshot_delete: str


@functools.cache
def _run_sql() -> _RunSQL:
    """A wake's and a sleep's writes (its ``ActorRun``, the snapshot) as plain
    SQL, built once, as :func:`_load_sql`: through the ORM, building the
    queries cost more of the database thread than running them
    (docs/performance.md, "Fifteenth round")."""
    qn = connection.ops.quote_name
    run, snapshot = qn(ActorRun._meta.db_table), qn(Snapshot._meta.db_table)
    returns_id = bool(connection.features.can_return_columns_from_insert)
    return _RunSQL(
        run_start=(f"INSERT INTO {run} ({qn('room_id')}, {qn('process')}, {qn('woke_at')}, {qn('awake_ms')}, {qn('sleep_reason')})"
                   f" VALUES (%s, %s, %s, 0, '')" + (f" RETURNING {qn('id')}" if returns_id else "")),
        run_start_returns_id=returns_id,
        run_end=f"UPDATE {run} SET {qn('slept_at')} = %s, {qn('awake_ms')} = %s, {qn('sleep_reason')} = %s WHERE {qn('id')} = %s",
        # Both backends Dorm runs on (SQLite >= 3.24, PostgreSQL) know ON CONFLICT.
        snapshot_insert=(f"INSERT INTO {snapshot} ({qn('room_id')}, {qn('seq')}, {qn('state')}, {qn('created_at')})"
                         f" VALUES (%s, %s, %s, %s) ON CONFLICT ({qn('room_id')}, {qn('seq')}) DO NOTHING"),
        snapshot_older=(f"SELECT {qn('id')}, {qn('seq')} FROM {snapshot} WHERE {qn('room_id')} = %s AND {qn('seq')} < %s"
                        f" ORDER BY {qn('seq')} DESC LIMIT 2"),
        snapshot_delete=f"DELETE FROM {snapshot} WHERE {qn('id')} = %s",
    )
