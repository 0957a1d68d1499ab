"""History retention: snapshot first, never inside the idempotency window."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings

from rooms.models import Event, Room, Snapshot
from rooms.retention import apply_retention, policy_for

pytestmark = pytest.mark.django_db(transaction=True)


def dorm(**overrides: Any) -> Any:
    return override_settings(DORM={**settings.DORM, **overrides})


@database_sync_to_async
def seqs(slug: str) -> list[int]:
    return list(Event.objects.filter(room__slug=slug).order_by("seq").values_list("seq", flat=True))


@database_sync_to_async
def snapshot_seqs(slug: str) -> list[int]:
    return list(Snapshot.objects.filter(room__slug=slug).order_by("seq").values_list("seq", flat=True))


async def draw_many(connect: Any, slug: str, n: int) -> Any:
    a = await connect(slug, userId="a")
    for i in range(n):
        await a.send("draw", {"i": i}, id=f"d{i}")
    for _ in range(n):
        await a.recv_type("ack")
    return a


def test_policies_are_per_kind_with_a_default_and_room_overrides() -> None:
    with dorm(RETENTION={"chat": {"keep_days": 30}, "*": {"keep_events": 100}}):
        assert policy_for("chat", {}) == {"keep_days": 30}
        assert policy_for("whiteboard", {}) == {"keep_events": 100}
        assert policy_for("chat", {"retention": {"keep_events": 5}}) == {"keep_days": 30, "keep_events": 5}
    assert policy_for("chat", {}) == {}


async def test_keep_last_n_snapshots_first_and_the_room_continues_unchanged(runtime: Any, connect: Any) -> None:
    a = await draw_many(connect, "kept", 30)
    state_before = (await connect("kept", userId="b")).welcome["state"]
    with dorm(RETENTION={"whiteboard": {"keep_events": 10}}, DEDUP_WINDOW_SECONDS=0.0):
        result = await database_sync_to_async(apply_retention)()
    assert result == {"rooms": 1, "deleted": 20}
    assert await seqs("kept") == list(range(21, 31))
    assert await snapshot_seqs("kept") == [30], "a snapshot covers every deleted event"
    # A fresh actor (after a restart) rebuilds the same state and seq goes on.
    await runtime.registry.stop_all()
    c = await connect("kept", userId="c")
    assert c.welcome["seq"] == 30 and c.welcome["state"] == state_before
    old = await connect("kept", userId="d", since=5)
    assert old.welcome["resumed"] is False and old.welcome["state"] == state_before
    await a.send("draw", {"i": 99}, id="after")
    assert (await a.recv_type("ack"))["seq"] == 31


async def test_events_inside_the_idempotency_window_are_kept(runtime: Any, connect: Any) -> None:
    await draw_many(connect, "recent", 12)
    with dorm(RETENTION={"*": {"keep_events": 2}}):  # the default 10-minute window
        assert await database_sync_to_async(apply_retention)() == {"rooms": 0, "deleted": 0}
    assert await seqs("recent") == list(range(1, 13))


async def test_keep_days_deletes_only_older_events(runtime: Any, connect: Any) -> None:
    await draw_many(connect, "aged", 6)

    @database_sync_to_async
    def age_first_four() -> None:
        Event.objects.filter(room__slug="aged", seq__lte=4).update(ts=1)  # 1970
        Room.objects.filter(slug="aged").update(settings={"retention": {"keep_days": 1}})

    await age_first_four()
    assert (await database_sync_to_async(apply_retention)())["deleted"] == 4
    assert await seqs("aged") == [5, 6]
    assert await snapshot_seqs("aged") == [6]
