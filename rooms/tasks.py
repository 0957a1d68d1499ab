"""Celery tasks (the distributed mode); beat's schedule is in settings.

Each task is a thin shell around a plain function that the embedded mode or
a management command can call as well.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_shutdown

from rooms.runtime.dispatch import beat_lookahead_seconds
from rooms.runtime.registry import alarm_scheduler_mode
from rooms.runtime.worker_host import shutdown_worker_host, worker_host

log = logging.getLogger("dorm.tasks")


@shared_task(name="rooms.tasks.dispatch_alarms", ignore_result=True)
def dispatch_alarms() -> int:
    """Claim the alarms due before the next beat and deliver each on time."""
    if alarm_scheduler_mode() != "celery":
        return 0
    return worker_host().dispatch(beat_lookahead_seconds())


@shared_task(name="rooms.tasks.apply_retention", ignore_result=True)
def apply_retention() -> dict[str, int]:
    from rooms.retention import apply_retention as run

    return run()


@shared_task(name="rooms.tasks.roll_up_usage", ignore_result=True)
def roll_up_usage() -> Any:
    """Write this worker's usage counters (rooms it hosted for alarms);
    every ASGI process flushes its own once a minute (billing/flush.py)."""
    from billing.flush import flush_sync

    return flush_sync()


@worker_shutdown.connect
def _hand_rooms_over(**kwargs: Any) -> None:
    shutdown_worker_host()
