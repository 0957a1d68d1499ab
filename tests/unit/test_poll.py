"""The poll kind: durable votes, a throttled server-side tally, closed by the
host or by its deadline alarm."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async

from rooms.kinds.poll import TALLY_EVERY_SECONDS
from rooms.models import Alarm, Event, Room
from rooms.runtime.actor import RoomContext

pytestmark = pytest.mark.django_db(transaction=True)


async def make_poll(slug: str, **settings: Any) -> None:
    await database_sync_to_async(Room.objects.create)(
        slug=slug, kind="poll", settings={"question": "Lunch?", "options": ["pizza", "soup", "salad"], **settings}
    )


@database_sync_to_async
def log_of(slug: str) -> list[tuple[int, str, str, str]]:
    return list(Event.objects.filter(room__slug=slug).order_by("seq").values_list("seq", "type", "user_id", "payload"))


async def tallies(client: Any, quiet: float) -> list[tuple[float, dict[str, Any]]]:
    """Every tally received until ``quiet`` seconds pass without a frame."""
    got = []
    while not await client.nothing(quiet):
        frame = await client.recv()
        if frame["type"] == "tally":
            got.append((time.monotonic(), frame["payload"]))
    return got


async def test_one_changeable_vote_per_user_and_a_throttled_tally(runtime: Any, connect: Any) -> None:
    await make_poll("lunch")
    watcher = await connect("lunch", userId="w")
    assert watcher.welcome["state"] == {
        "question": "Lunch?", "options": ["pizza", "soup", "salad"], "counts": [0, 0, 0], "total": 0,
        "closed": False, "closedBy": None, "closesAt": None,
    }
    voters = [await connect("lunch", userId=f"v{i}") for i in range(10)]
    started = time.monotonic()
    # 30 votes in a burst: each voter votes three times, changing their mind.
    for round_ in range(3):
        for i, v in enumerate(voters):
            await v.send("vote", {"option": (i + round_) % 3}, id=f"{round_}")
    for v in voters:
        for _ in range(3):
            await v.recv_type("ack")
    got = await tallies(watcher, 0.8)
    elapsed = time.monotonic() - started
    # At most one tally per TALLY_EVERY_SECONDS, and the last one is exact.
    assert 1 <= len(got) <= int(elapsed / TALLY_EVERY_SECONDS) + 2, (len(got), elapsed)
    gaps = [b[0] - a[0] for a, b in zip(got, got[1:])]
    assert all(g >= TALLY_EVERY_SECONDS - 0.05 for g in gaps), gaps
    final = got[-1][1]
    expected = [0, 0, 0]
    for i in range(10):
        expected[(i + 2) % 3] += 1
    assert final == {"counts": expected, "total": 10, "seq": 30, "closed": False}
    # A new client sees the same tally in its welcome (it is the state).
    late = await connect("lunch", userId="late")
    assert late.welcome["state"]["counts"] == expected
    bad = await connect("lunch", userId="x")
    await bad.send("vote", {"option": 3}, id="oob")
    assert (await bad.recv_type("error"))["detail"] == "vote: option must be below 3"


async def test_clients_cannot_close_and_the_host_close_stops_votes(runtime: Any, connect: Any) -> None:
    await make_poll("closing")
    a = await connect("closing", userId="a")
    await a.send("close_poll", None, id="c")
    assert (await a.recv_type("error"))["reason"] == "forbidden"  # anonymous users have the write scope

    async def host_closes(ctx: RoomContext) -> int:
        return ctx.publish("close_poll", None, user_id="host")

    assert await runtime.registry.call("closing", host_closes) == 1
    assert (await a.recv_type("close_poll"))["seq"] == 1
    await a.send("vote", {"option": 0}, id="v")
    assert (await a.recv_type("error"))["detail"] == "vote: the poll is closed"


async def test_the_deadline_alarm_closes_the_poll_even_asleep(runtime: Any, connect: Any) -> None:
    from django.conf import settings
    from django.test import override_settings

    with override_settings(DORM={**settings.DORM, "HIBERNATE_AFTER_SECONDS": 0.2}):
        # Far enough that the room sleeps before the dispatcher claims the
        # alarm (1.5 s ahead) and wakes it for its deadline.
        closes_at = int(time.time() * 1000) + 2200
        await make_poll("timed", closesAt=closes_at)
        a = await connect("timed", userId="a")
        assert a.welcome["state"]["closesAt"] == closes_at
        await a.send("vote", {"option": 1}, id="v")
        assert (await a.recv_type("ack"))["seq"] == 1
        assert await database_sync_to_async(Alarm.objects.filter(room__slug="timed", name="deadline").exists)()
        for _ in range(100):  # the room falls asleep before its deadline
            if "timed" not in runtime.registry.actors:
                break
            await asyncio.sleep(0.02)
        assert "timed" not in runtime.registry.actors and time.time() * 1000 < closes_at - 1500
        closed = await a.recv_type("close_poll", timeout=4)
        assert closed["payload"] == {"reason": "deadline"} and closed["userId"] == ""
        assert 0 <= closed["ts"] - closes_at < 1500
        tally = await a.recv_type("tally")
        assert tally["payload"] == {"counts": [0, 1, 0], "total": 1, "seq": 2, "closed": True}
        await a.send("vote", {"option": 0}, id="late")
        assert (await a.recv_type("error"))["detail"] == "vote: the poll is closed"
    assert [row[1] for row in await log_of("timed")] == ["vote", "close_poll"]
    assert not await database_sync_to_async(Alarm.objects.filter(room__slug="timed").exists)()
