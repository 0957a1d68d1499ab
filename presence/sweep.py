"""The stale sweep of the presence ledger: a plain function for any scheduler.

``sweep_stale()`` closes the open sessions of processes that stopped beating
(``left_at`` = the process's last beat, close code 1006 and a reason that
says so), tells other apps (``presence.signals.process_gone``: billing closes
the process's connection spans) and deletes closed sessions past the
retention. It needs nothing but
the database, so it runs from Celery beat as well as from the periodic task
every ASGI process runs (``service.py``); running it twice, or on several
processes at once, is harmless.

Celery beat entry (when the project's Celery app is on main)::

    CELERY_BEAT_SCHEDULE = {
        "presence-sweep": {"task": "presence.tasks.sweep", "schedule": 15.0},
    }
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Value
from django.db.models.functions import Greatest
from django.utils import timezone

from presence.signals import process_gone
from presence.models import PROCESS_GONE_CODE, PROCESS_GONE_REASON, PresenceProcess, PresenceSession
from rooms.conf import dorm_settings

log = logging.getLogger("dorm.presence")

RETENTION_DELETE_BATCH = 5000


def process_dead_after() -> timedelta:
    seconds = dorm_settings.PRESENCE_SWEEP_SECONDS * dorm_settings.PRESENCE_PROCESS_DEAD_AFTER_BEATS
    return timedelta(seconds=max(seconds, 1.0))


def sweep_stale(now: datetime | None = None) -> dict[str, int]:
    """Close sessions of dead processes; apply the retention. Returns counts."""
    now = now or timezone.now()
    closed = 0
    dead = list(
        PresenceProcess.objects.filter(stopped_at__isnull=True, beat_at__lt=now - process_dead_after())
    )
    for process in dead:
        with transaction.atomic():
            # A session that began after the last beat (between two beats)
            # cannot end before it began.
            n = PresenceSession.objects.filter(process=process.process, left_at__isnull=True).update(
                left_at=Greatest("joined_at", Value(process.beat_at)),
                close_code=PROCESS_GONE_CODE,
                close_reason=PROCESS_GONE_REASON,
            )
            PresenceProcess.objects.filter(pk=process.pk, stopped_at__isnull=True).update(
                stopped_at=process.beat_at, dead=True
            )
        closed += n
        log.warning("presence sweep: process gone process=%s sessions_closed=%d", process.process, n)
        process_gone.send(None, process=process.process, last_beat=process.beat_at)
    deleted = 0
    retention_days = dorm_settings.PRESENCE_LEDGER_RETENTION_DAYS
    if retention_days:
        cutoff = now - timedelta(days=retention_days)
        ids = list(
            PresenceSession.objects.filter(left_at__lt=cutoff).values_list("id", flat=True)[:RETENTION_DELETE_BATCH]
        )
        if ids:
            deleted, _ = PresenceSession.objects.filter(id__in=ids).delete()
        PresenceProcess.objects.filter(stopped_at__lt=cutoff).delete()
    return {"processes_dead": len(dead), "sessions_closed": closed, "sessions_deleted": deleted}
