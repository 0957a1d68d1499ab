"""The actor's runs and snapshots are written with plain SQL
(rooms/runtime/persistence.py, ``_run_sql``): the rows read back through
the ORM are what ``ActorRun.objects.create`` / ``.update`` and
``Snapshot.objects.get_or_create`` wrote. (PostgreSQL runs the same
statements in the distributed e2e tests, whose rooms wake and sleep there.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from rooms.models import ActorRun, Room, Snapshot
from rooms.runtime.persistence import PROCESS_NAME, end_run, save_snapshot, start_run

pytestmark = pytest.mark.django_db


def test_a_run_starts_and_ends_as_the_orm_would_write_it() -> None:
    room = Room.objects.create(slug="runs")
    woke_at = timezone.now() - timedelta(seconds=5)
    first = start_run(room.id, woke_at)
    second = start_run(room.id, woke_at + timedelta(seconds=1))
    assert second > first
    run = ActorRun.objects.get(pk=first)
    assert (run.room_id, run.process, run.woke_at, run.slept_at, run.awake_ms, run.sleep_reason) == (
        room.id, PROCESS_NAME, woke_at, None, 0, "",
    )
    before = timezone.now()
    end_run(first, 4_321, "idle")
    run.refresh_from_db()
    assert run.awake_ms == 4_321 and run.sleep_reason == "idle"
    assert run.slept_at is not None and before <= run.slept_at <= timezone.now()
    assert ActorRun.objects.get(pk=second).slept_at is None  # only its own row


def test_a_snapshot_is_stored_once_per_seq_with_its_time() -> None:
    room = Room.objects.create(slug="snaps")
    before = timezone.now()
    save_snapshot(room.id, 7, '{"a": 1}')
    save_snapshot(room.id, 7, '{"a": 2}')  # the same seq again (a retried sleep): the first is kept
    [snapshot] = Snapshot.objects.filter(room=room)
    assert (snapshot.seq, snapshot.state) == (7, '{"a": 1}')
    assert before <= snapshot.created_at <= timezone.now()
