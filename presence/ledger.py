"""Writing the presence ledger in batches.

The consumer reports opens and closes here (no await, no database work on the
socket's path); a per-process task writes whatever accumulated every
``PRESENCE_LEDGER_FLUSH_SECONDS`` in one transaction: ``bulk_create`` for new
sessions (those that also closed inside the batch are inserted closed) and
one ``bulk_update`` for the closes. A join storm of 500 sockets is a few
transactions, not 500.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from presence.models import SHUTDOWN_REASON, PresenceProcess, PresenceSession

log = logging.getLogger("dorm.presence")

USER_AGENT_CHARS = 256
REASON_CHARS = 200


def address_hash(address: str) -> str:
    """A keyed hash of the client address: comparable, not reversible without the key."""
    if not address:
        return ""
    key = f"dorm-presence-address:{settings.SECRET_KEY}".encode()
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(slots=True)
class Opened:
    connection_id: str
    room: str
    user_id: str
    joined_at: datetime
    user_agent: str
    address_hash: str


@dataclass(slots=True)
class Closed:
    connection_id: str
    left_at: datetime
    code: int
    reason: str


class LedgerBuffer:
    """What the consumer reported since the last write (one per process)."""

    def __init__(self) -> None:
        self.opened: dict[str, Opened] = {}
        self.closed: dict[str, Closed] = {}

    def open(self, connection_id: str, room: str, user_id: str, user_agent: str, address: str) -> None:
        self.opened[connection_id] = Opened(
            connection_id, room, user_id, timezone.now(), user_agent[:USER_AGENT_CHARS], address_hash(address)
        )

    def close(self, connection_id: str, code: int, reason: str) -> None:
        self.closed[connection_id] = Closed(connection_id, timezone.now(), int(code), reason[:REASON_CHARS])

    def __len__(self) -> int:
        return len(self.opened) + len(self.closed)

    def take(self) -> tuple[list[Opened], list[Closed]]:
        opened, closed = list(self.opened.values()), list(self.closed.values())
        self.opened, self.closed = {}, {}
        return opened, closed


def write_batch(process: str, opened: list[Opened], closed: list[Closed]) -> None:
    """One transaction: new sessions in, closed sessions out.

    Two ``executemany`` statements instead of ``bulk_create``/``bulk_update``:
    the ORM's per-row, per-field expression work was a fifth of the server's
    time at a few hundred connections per second (docs/performance.md).
    """
    closing = {c.connection_id: c for c in closed}
    connection = connections[PresenceSession.objects.db]
    adapt = connection.ops.adapt_datetimefield_value
    rows = []
    for o in opened:
        c = closing.pop(o.connection_id, None)
        rows.append(
            (
                o.room,
                o.user_id,
                o.connection_id,
                process,
                adapt(o.joined_at),
                adapt(c.left_at) if c else None,
                c.code if c else None,
                c.reason if c else "",
                o.user_agent,
                o.address_hash,
            )
        )
    updates = [(adapt(c.left_at), c.code, c.reason, c.connection_id) for c in closing.values()]
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        if rows:
            # A session already written (a retried batch) is kept as it is.
            cursor.executemany(_INSERT_SQL, rows)
        if updates:
            cursor.executemany(_CLOSE_SQL, updates)


def _sql() -> tuple[str, str]:
    meta = PresenceSession._meta
    qn = connections[PresenceSession.objects.db].ops.quote_name
    col = {f.name: qn(f.column) for f in meta.concrete_fields}
    names = ("room", "user_id", "connection_id", "process", "joined_at", "left_at", "close_code", "close_reason",
             "user_agent", "address_hash")
    insert = (
        f"INSERT INTO {qn(meta.db_table)} ({', '.join(col[n] for n in names)}) "
        f"VALUES ({', '.join(['%s'] * len(names))}) ON CONFLICT DO NOTHING"
    )
    close = (
        f"UPDATE {qn(meta.db_table)} SET {col['left_at']} = %s, {col['close_code']} = %s, {col['close_reason']} = %s "
        f"WHERE {col['connection_id']} = %s AND {col['left_at']} IS NULL"
    )
    return insert, close


_INSERT_SQL, _CLOSE_SQL = _sql()


def beat(process: str, *, started: bool = False) -> None:
    """This process is alive (the sweep of any process reads it)."""
    now = timezone.now()
    defaults: dict[str, object] = {"beat_at": now, "stopped_at": None, "dead": False}
    if started:
        defaults["started_at"] = now
    PresenceProcess.objects.update_or_create(
        process=process, defaults=defaults, create_defaults={**defaults, "started_at": now}
    )


def stopped(process: str) -> int:
    """A clean stop: close what this process left open, mark it stopped."""
    now = timezone.now()
    with transaction.atomic():
        n = PresenceSession.objects.filter(process=process, left_at__isnull=True).update(
            left_at=now, close_code=1001, close_reason=SHUTDOWN_REASON
        )
        PresenceProcess.objects.filter(process=process).update(beat_at=now, stopped_at=now)
    return n
