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


def test_a_wake_loads_the_room_its_alarms_and_starts_its_run_in_one_call() -> None:
    from rooms.models import Alarm
    from rooms.runtime.persistence import wake_room

    room = Room.objects.create(slug="waking", kind="chat")
    due = timezone.now() + timedelta(minutes=5)
    Alarm.objects.create(room=room, name="tick", due_at=due, next_attempt_at=due, token=1)
    woke_at = timezone.now()
    woken = wake_room("waking", None, 0, 100, woke_at)
    assert woken.loaded.room_id == room.id and woken.loaded.kind == "chat"
    assert list(woken.alarms) == ["tick"] and woken.alarms["tick"].due_at == due
    run = ActorRun.objects.get(pk=woken.run_id)
    assert run.room_id == room.id and run.woke_at == woke_at and run.slept_at is None


def test_a_sleep_writes_its_snapshot_and_ends_its_run_together() -> None:
    from django.db import IntegrityError

    from rooms.runtime.persistence import sleep_room

    room = Room.objects.create(slug="sleeping")
    run = start_run(room.id, timezone.now())
    with pytest.raises(IntegrityError):
        sleep_room(room.id, (3, None), run, 50, "idle")  # type: ignore[arg-type]  # a snapshot that cannot be stored
    assert ActorRun.objects.get(pk=run).slept_at is None  # one transaction: the run is not ended without it
    sleep_room(room.id, (3, '{"s": 1}'), run, 50, "idle")
    assert ActorRun.objects.get(pk=run).awake_ms == 50
    assert list(Snapshot.objects.filter(room=room).values_list("seq", "state")) == [(3, '{"s": 1}')]
    sleep_room(room.id, None, None, 0, "idle")  # nothing to write


def test_alarms_are_read_as_the_orm_reads_them() -> None:
    from rooms.models import Alarm
    from rooms.runtime.alarms import AlarmEntry, load_alarms

    room = Room.objects.create(slug="alarms")
    now = timezone.now().replace(microsecond=123456)
    for i, status in enumerate([Alarm.SCHEDULED, Alarm.SCHEDULED, Alarm.FAILED]):
        due = now + timedelta(seconds=i * 3600 + 0.5)
        Alarm.objects.create(room=room, name=f"a{i}", due_at=due, next_attempt_at=due, token=10 + i, status=status)
    expected = {
        name: AlarmEntry(due_at, token)
        for name, due_at, token in Alarm.objects.filter(room=room, status=Alarm.SCHEDULED).values_list("name", "due_at", "token")
    }
    loaded = load_alarms(room.id)
    assert loaded == expected and set(loaded) == {"a0", "a1"}
    assert all(entry.due_at.tzinfo is not None for entry in loaded.values())
    assert load_alarms(room.id + 1000) == {}
