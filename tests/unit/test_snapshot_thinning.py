"""Snapshots grow with the log, not with wake/hibernate cycles (issue 11).

A room snapshots on every hibernation with new events; ``save_snapshot``
keeps the newest and checkpoints about ``SNAPSHOT_EVERY_EVENTS`` apart.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings

from rooms.models import Event, Room, Snapshot
from rooms.runtime import actor as actor_module
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


async def _draw_and_count_snapshots(connect: object, slug: str, draws: int) -> tuple[list[tuple[int, int]], int]:
    """``draws`` strokes into a fresh whiteboard; its snapshots (seq, bytes) and the log's payload bytes."""
    client = await connect(slug, userId="a")  # type: ignore[operator]
    for i in range(draws):
        await client.send("draw", {"points": list(range(i % 7, i % 7 + 12))}, id=f"d{i}")
        assert (await client.recv_type("ack"))["seq"] == i + 1
    rows = await database_sync_to_async(
        lambda: list(Snapshot.objects.filter(room__slug=slug).order_by("seq").values_list("seq", "state"))
    )()
    log_bytes = await database_sync_to_async(
        lambda: sum(len(p) for p in Event.objects.filter(room__slug=slug).values_list("payload", flat=True))
    )()
    return [(seq, len(state)) for seq, state in rows], log_bytes


@pytest.mark.django_db(transaction=True)
async def test_a_big_state_snapshots_once_its_log_is_as_big(runtime: object, connect: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshot bytes stay proportional to the log, not to state x events / N."""
    monkeypatch.setattr(actor_module, "SNAPSHOT_ALWAYS_BYTES", 0)  # every state counts as big here
    with override_settings(DORM={**settings.DORM, "SNAPSHOT_EVERY_EVENTS": 10, "MESSAGE_RATE_PER_SECOND": 0}):
        snapshots, log_bytes = await _draw_and_count_snapshots(connect, "big", 300)
    # Every 10 events would be 30 snapshots of a growing board (~10x the log's bytes).
    assert 2 <= len(snapshots) <= 8, snapshots
    assert sum(size for _, size in snapshots) <= 3 * log_bytes, (snapshots, log_bytes)
    # Each waited for a log at least as big as the snapshot before it.
    assert all(b - a >= 10 for (a, _), (b, _) in zip(snapshots, snapshots[1:])), snapshots


@pytest.mark.django_db(transaction=True)
async def test_a_small_state_still_snapshots_every_n_events(runtime: object, connect: object) -> None:
    with override_settings(DORM={**settings.DORM, "SNAPSHOT_EVERY_EVENTS": 10, "MESSAGE_RATE_PER_SECOND": 0}):
        snapshots, _ = await _draw_and_count_snapshots(connect, "small", 60)
    assert [seq for seq, _ in snapshots] == [10, 20, 30, 40, 50, 60]
