"""Durable alarms and in-actor timers, in-process (embedded scheduler).

Tiny kinds defined here, one per behaviour; the end-to-end tests with real
servers and a real Celery worker and beat are in tests/e2e/test_alarms.py.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from rooms.kinds.base import RoomKind, durable
from rooms.models import Alarm, Room
from rooms.runtime.actor import RoomContext
from rooms.runtime.dispatch import claim_due, release_claims
from rooms.runtime.messages import AlarmDue
from rooms.schema import Int, Obj

pytestmark = pytest.mark.django_db(transaction=True)

RUNS: list[tuple[str, str, int, float]] = []  # (room, name, retry count, monotonic time)


class Ringer(RoomKind):
    """Counts its alarm runs in storage and broadcasts each one."""

    name = "ringer"

    async def on_alarm(self, room: RoomContext, name: str) -> None:
        RUNS.append((room.slug, name, room.alarm_retry_count, time.monotonic()))
        assert room.get_alarm(name) is None, "an alarm is unset while it runs"
        room.storage.put(f"rang:{name}", await room.storage.get(f"rang:{name}", 0) + 1)
        await room.broadcast("rang", {"name": name})


class AlwaysFails(RoomKind):
    name = "always_fails"

    async def on_alarm(self, room: RoomContext, name: str) -> None:
        RUNS.append((room.slug, name, room.alarm_retry_count, time.monotonic()))
        room.storage.put("must-not-stick", True)
        raise ValueError("the handler's own words")


class Rearms(RoomKind):
    """A periodic alarm: each run sets the next one."""

    name = "rearms"

    async def on_alarm(self, room: RoomContext, name: str) -> None:
        RUNS.append((room.slug, name, room.alarm_retry_count, time.monotonic()))
        if sum(1 for r in RUNS if r[0] == room.slug) < 3:
            room.set_alarm(time.time() + 0.05, name)


class Ticker(RoomKind):
    """``start`` runs an every(0.05) timer and an after(0.12) one."""

    name = "ticker"
    messages = {"start": durable(Obj({"n": Int(0, 10)}))}

    async def on_message(self, room: RoomContext, message: Any, seq: int | None) -> None:
        async def tick(ctx: RoomContext) -> None:
            await ctx.broadcast("tick", None)

        room.every(0.05, tick)
        room.after(0.12, lambda ctx: RUNS.append((ctx.slug, "after", 0, time.monotonic())))
        cancelled = room.after(0.06, lambda ctx: RUNS.append((ctx.slug, "cancelled", 0, time.monotonic())))
        cancelled.cancel()


KINDS = {
    "ringer": f"{__name__}.Ringer",
    "always_fails": f"{__name__}.AlwaysFails",
    "rearms": f"{__name__}.Rearms",
    "ticker": f"{__name__}.Ticker",
}


@pytest.fixture(autouse=True)
def _kinds() -> Any:
    RUNS.clear()
    with override_settings(
        DORM={**settings.DORM, "KINDS": {**settings.DORM["KINDS"], **KINDS}, "ALARM_RETRY_BASE_SECONDS": 0.02}
    ):
        yield


async def make_room(slug: str, kind: str) -> None:
    await database_sync_to_async(Room.objects.create)(slug=slug, kind=kind)


@database_sync_to_async
def alarm_rows(slug: str) -> list[dict[str, Any]]:
    return list(Alarm.objects.filter(room__slug=slug).values("name", "status", "attempts", "last_error", "due_at"))


@database_sync_to_async
def stored(slug: str, key: str) -> str | None:
    from rooms.models import StoredValue

    return StoredValue.objects.filter(room__slug=slug, key=key).values_list("value", flat=True).first()


async def wait_for(pred: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_set_get_delete_named_alarms_are_rows(runtime: Any) -> None:
    await make_room("book", "ringer")
    at = timezone.now() + timedelta(hours=1)

    async def set_two(ctx: RoomContext) -> Any:
        ctx.set_alarm(at)
        ctx.set_alarm(at.timestamp() + 60, "later")
        return ctx.get_alarm(), ctx.get_alarm("later"), ctx.get_alarm("nope")

    default, later, nope = await runtime.registry.call("book", set_two)
    assert default == at and later == at + timedelta(seconds=60) and nope is None
    rows = {r["name"]: r for r in await alarm_rows("book")}
    assert rows[""]["due_at"] == at and rows["later"]["status"] == "scheduled"

    async def delete_default(ctx: RoomContext) -> Any:
        ctx.delete_alarm()
        return ctx.list_alarms()

    assert list(await runtime.registry.call("book", delete_default)) == ["later"]
    assert [r["name"] for r in await alarm_rows("book")] == ["later"]

    async def bad(ctx: RoomContext) -> None:
        ctx.set_alarm(at.replace(tzinfo=None))

    with pytest.raises(ValueError):
        await runtime.registry.call("book", bad)


async def test_due_alarm_runs_once_broadcasts_and_its_writes_commit_with_the_row_deletion(
    runtime: Any, connect: Any
) -> None:
    await make_room("ring", "ringer")
    a = await connect("ring", userId="a")
    due = time.time() + 0.3

    async def arm(ctx: RoomContext) -> None:
        ctx.set_alarm(due, "x")

    await runtime.registry.call("ring", arm)
    got = await a.recv_type("rang", timeout=3)
    assert got["payload"] == {"name": "x"}
    assert await a.nothing(0.5)
    assert [(r[1], r[2]) for r in RUNS] == [("x", 0)]
    assert RUNS[0][3] - (due - time.time() + time.monotonic()) < 0.5
    assert await alarm_rows("ring") == []
    assert await stored("ring", "rang:x") == "1"


async def test_a_handler_that_always_fails_is_tried_six_times_then_marked_failed(runtime: Any) -> None:
    await make_room("broken", "always_fails")

    async def arm(ctx: RoomContext) -> None:
        ctx.set_alarm(time.time())

    await runtime.registry.call("broken", arm)
    await wait_for(lambda: len(RUNS) >= 6, timeout=5)
    await asyncio.sleep(0.3)
    assert [r[2] for r in RUNS] == [0, 1, 2, 3, 4, 5], "six attempts, retry counts 0..5"
    gaps = [b[3] - a[3] for a, b in zip(RUNS, RUNS[1:])]
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:])), f"backoff grows: {gaps}"
    [row] = await alarm_rows("broken")
    assert row["status"] == "failed" and row["attempts"] == 6
    assert row["last_error"] == "ValueError: the handler's own words"
    assert await stored("broken", "must-not-stick") is None, "a failed handler's writes are dropped"


def test_the_admin_lists_failed_alarms_with_their_last_error(admin_client: Any) -> None:
    room = Room.objects.create(slug="adm", kind="ringer")
    now = timezone.now()
    Alarm.objects.create(
        room=room, name="n", due_at=now, next_attempt_at=now, token=1, status="failed", attempts=6,
        last_error="KeyError: 'gone'",
    )
    page = admin_client.get("/admin/rooms/alarm/?status__exact=failed").content.decode()
    assert "adm" in page and "KeyError: &#x27;gone&#x27;" in page and "failed" in page


async def test_a_handler_may_set_its_own_alarm_again(runtime: Any) -> None:
    await make_room("tick3", "rearms")

    async def arm(ctx: RoomContext) -> None:
        ctx.set_alarm(time.time() + 0.05, "beat")

    await runtime.registry.call("tick3", arm)
    await wait_for(lambda: len(RUNS) >= 3)
    await asyncio.sleep(0.3)
    assert len(RUNS) == 3
    assert await alarm_rows("tick3") == []


async def test_a_duplicate_delivery_runs_once(runtime: Any) -> None:
    await make_room("dup", "ringer")

    @database_sync_to_async
    def add_due() -> None:
        now = timezone.now()
        Alarm.objects.create(room=Room.objects.get(slug="dup"), name="d", due_at=now, next_attempt_at=now, token=7)

    with override_settings(DORM={**settings.DORM, "KINDS": {**settings.DORM["KINDS"], **KINDS}, "ALARM_SCHEDULER": "off"}):
        await add_due()
        claimed = await database_sync_to_async(claim_due)(0.0)
        assert [c.name for c in claimed] == ["d"]
        assert await database_sync_to_async(claim_due)(0.0) == [], "claimed once"
        item = claimed[0].item()
        runtime.registry.submit("dup", item)
        runtime.registry.submit("dup", AlarmDue(item.alarm_id, item.name, item.token, item.attempts, item.due_ms))
        await wait_for(lambda: len(RUNS) >= 1)
        await asyncio.sleep(0.2)
    assert len(RUNS) == 1


def test_claims_are_compare_and_set_and_a_clean_stop_gives_them_back() -> None:
    room = Room.objects.create(slug="cas", kind="ringer")
    now = timezone.now()
    Alarm.objects.create(room=room, name="", due_at=now + timedelta(seconds=1), next_attempt_at=now + timedelta(seconds=1), token=3)
    assert claim_due(0.5, now) == [], "not within the look-ahead yet"
    first = claim_due(2.0, now)
    assert len(first) == 1 and claim_due(2.0, now) == []
    # The claim holds until due + ALARM_CLAIM_SECONDS, then anyone may deliver it.
    later = now + timedelta(seconds=1 + 10.5)
    assert len(claim_due(0.0, later)) == 1
    assert release_claims(first) == 1 and len(claim_due(2.0, now)) == 1


async def test_timers_tick_while_awake_and_stop_with_hibernation(runtime: Any, connect: Any) -> None:
    with override_settings(
        DORM={**settings.DORM, "KINDS": {**settings.DORM["KINDS"], **KINDS}, "HIBERNATE_AFTER_SECONDS": 0.4}
    ):
        await make_room("ticks", "ticker")
        a = await connect("ticks", userId="a")
        await a.send("start", {"n": 1}, id="s")
        await a.recv_type("ack")
        started = time.monotonic()
        # The ticks do not keep the room awake: it sleeps ~0.4 s after the frame.
        while "ticks" in runtime.registry.actors:
            assert time.monotonic() - started < 2, "a running timer kept the room awake"
            await asyncio.sleep(0.02)
        ticks = 0
        for _ in range(40):  # drain; no tick comes after the sleep
            if await a.nothing(0.15):
                break
            if (await a.recv())["type"] == "tick":
                ticks += 1
        else:
            raise AssertionError("ticks went on after the room hibernated")
        assert 4 <= ticks <= 12, ticks
        assert [r[1] for r in RUNS] == ["after"], "after() ran once; the cancelled one never"
