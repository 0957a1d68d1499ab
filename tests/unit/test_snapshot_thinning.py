"""Snapshots grow with the log, not with wake/hibernate cycles (issue 11).

A room snapshots on every hibernation with new events; ``save_snapshot``
keeps the newest and checkpoints about ``SNAPSHOT_EVERY_EVENTS`` apart.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from rooms.models import Room, Snapshot
from rooms.runtime.persistence import save_snapshot

pytestmark = pytest.mark.django_db


def _seqs(room: Room) -> list[int]:
    return list(Snapshot.objects.filter(room=room).order_by("seq").values_list("seq", flat=True))


def test_hibernation_snapshots_are_thinned_to_checkpoints() -> None:
    room = Room.objects.create(slug="thin")
    with override_settings(DORM={**settings.DORM, "SNAPSHOT_EVERY_EVENTS": 10}):
        # A hibernation every 3 events, up to seq 60.
        for seq in range(3, 61, 3):
            save_snapshot(room.id, seq, f'{{"seq": {seq}}}')
    seqs = _seqs(room)
    assert seqs[-1] == 60, "the newest is kept"
    assert len(seqs) <= 60 // 10 + 1, seqs
    gaps = [b - a for a, b in zip(seqs, seqs[1:-1])]
    assert all(g >= 10 for g in gaps), seqs
    assert seqs[0] >= 10


def test_regular_snapshots_are_all_kept() -> None:
    room = Room.objects.create(slug="regular")
    with override_settings(DORM={**settings.DORM, "SNAPSHOT_EVERY_EVENTS": 10}):
        for seq in (10, 20, 30):
            save_snapshot(room.id, seq, "{}")
    assert _seqs(room) == [10, 20, 30]
