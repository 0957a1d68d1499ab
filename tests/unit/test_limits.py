"""Limits: token buckets (memory and real Redis), 4429, 4409, rate_limited."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings

from rooms.buckets.memory import MemoryBuckets
from rooms.buckets.redis import RedisBuckets
from rooms.models import Event, Room


def dorm(**overrides: Any) -> Any:
    return override_settings(DORM={**settings.DORM, **overrides})


# -- the buckets ------------------------------------------------------------------


def test_memory_bucket_admits_the_burst_then_refuses_with_the_wait() -> None:
    buckets = MemoryBuckets()
    assert [buckets.take_now("k", 2.0, 3, 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take_now("k", 2.0, 3, 100.0) == pytest.approx(0.5)
    # A refused take consumes nothing: 0.25 s later the wait is 0.25 s, not longer.
    assert buckets.take_now("k", 2.0, 3, 100.25) == pytest.approx(0.25)
    assert buckets.take_now("k", 2.0, 3, 100.5) == 0.0
    # Refill never exceeds the burst.
    assert [buckets.take_now("k", 2.0, 3, 1000.0) for _ in range(4)][-1] == pytest.approx(0.5)
    assert buckets.take_now("other", 2.0, 3, 100.0) == 0.0  # keys are independent


def test_memory_buckets_stay_bounded() -> None:
    buckets = MemoryBuckets(max_buckets=100)
    for i in range(1000):
        buckets.take_now(f"addr-{i}", 1.0, 5, 50.0)
    assert len(buckets) <= 104
    # Buckets that are full again are dropped as new keys arrive (a few per
    # insert, so each call costs the same).
    before = len(buckets)
    for i in range(10):
        buckets.take_now(f"late-{i}", 1.0, 5, 500.0)
    assert len(buckets) <= before - 20


async def test_redis_buckets_are_shared_across_clients_and_expire(redis_url: str, redis_prefix: str) -> None:
    # Two clients stand for two server processes.
    one, two = RedisBuckets(redis_url, redis_prefix), RedisBuckets(redis_url, redis_prefix)
    try:
        assert [await one.take("conn:1.2.3.4", 10.0, 2), await two.take("conn:1.2.3.4", 10.0, 2)] == [0.0, 0.0]
        wait = await two.take("conn:1.2.3.4", 10.0, 2)
        assert 0.05 < wait <= 0.1
        assert await one.take("conn:5.6.7.8", 10.0, 2) == 0.0  # another key
        await asyncio.sleep(wait + 0.01)
        assert await one.take("conn:1.2.3.4", 10.0, 2) == 0.0  # refilled
        ttl_ms = redis.Redis.from_url(redis_url).pttl(redis_prefix + "conn:1.2.3.4")
        assert 0 < ttl_ms <= 1000 + 200  # gone once full again (+1 s margin)
    finally:
        await one.close()
        await two.close()


async def test_redis_refused_take_writes_nothing(redis_url: str, redis_prefix: str) -> None:
    buckets = RedisBuckets(redis_url, redis_prefix)
    try:
        assert await buckets.take("k", 1.0, 1) == 0.0
        waits = [await buckets.take("k", 1.0, 1) for _ in range(20)]
        # Hammering does not push the client back: every wait is under one period.
        assert all(0 < w <= 1.0 for w in waits) and waits[-1] <= waits[0]
    finally:
        await buckets.close()


# -- through the WebSocket ------------------------------------------------------------

pytestmark_db = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def stored_count(room: str) -> int:
    return Event.objects.filter(room__slug=room).count()


@pytestmark_db
@dorm(MESSAGE_RATE_PER_SECOND=5.0, MESSAGE_BURST=10)
async def test_per_user_rate_limit_drops_frames_softly_and_others_see_exactly_the_acked(connect: Any) -> None:
    a = await connect("rate", userId="a")
    b = await connect("rate", userId="b")
    for i in range(30):
        await a.send("draw", {"i": i}, id=f"m{i}")
    acks: list[dict[str, Any]] = []
    limited: list[dict[str, Any]] = []
    while len(acks) + len(limited) < 30:
        frame = await a.recv()
        if frame["type"] == "ack":
            acks.append(frame)
        elif frame["type"] == "rate_limited":
            limited.append(frame)
    assert len(acks) >= 10 and len(limited) >= 10  # burst 10 (+ what refilled meanwhile)
    assert all(0 < f["retryAfterMs"] <= 200 for f in limited)
    assert {f["id"] for f in limited}.isdisjoint({f["id"] for f in acks})
    received = []
    while not await b.nothing(0.3):
        frame = await b.recv()
        if frame["type"] == "draw":
            received.append(frame["seq"])
    assert received == [f["seq"] for f in acks] == list(range(1, len(acks) + 1))
    assert await stored_count("rate") == len(acks)
    # The connection stays, and after waiting the user may send again.
    await asyncio.sleep(limited[-1]["retryAfterMs"] / 1000)
    await a.send("draw", {"i": "again"}, id="again")
    assert (await a.recv_type("ack"))["seq"] == len(acks) + 1


@pytestmark_db
@dorm(MESSAGE_RATE_PER_SECOND=1.0, MESSAGE_BURST=2)
async def test_the_message_limit_is_per_user_per_room(connect: Any) -> None:
    a1 = await connect("lim1", userId="a")
    a2 = await connect("lim1", userId="a")  # same user, second tab: one bucket
    other_room = await connect("lim2", userId="a")
    b = await connect("lim1", userId="b")
    await a1.send("cursor", {"x": 1}, id="1")
    await a2.send("cursor", {"x": 1}, id="2")
    await a1.send("cursor", {"x": 1}, id="3")
    assert (await a1.recv_type("ack"))["id"] == "1"
    assert (await a2.recv_type("ack"))["id"] == "2"
    assert (await a1.recv_type("rate_limited"))["id"] == "3"
    await other_room.send("cursor", {"x": 1}, id="4")
    assert (await other_room.recv_type("ack"))["id"] == "4"
    await b.send("cursor", {"x": 1}, id="5")
    assert (await b.recv_type("ack"))["id"] == "5"


@pytestmark_db
@dorm(CONNECT_RATE_PER_SECOND=0.01, CONNECT_BURST=3)
async def test_new_connections_per_address_over_the_burst_close_4429(connect: Any) -> None:
    for _ in range(3):
        await connect("flood", userId="u", client="10.0.0.1")
    refused = await connect("flood", userId="u", client="10.0.0.1", expect_welcome=False)
    code, reason = await refused.closed_with()
    assert code == 4429 and reason.startswith("too many connection attempts")
    await connect("flood", userId="u", client="10.0.0.2")  # another address is not affected


@pytestmark_db
@dorm(CONNECT_RATE_PER_SECOND=0.01, CONNECT_BURST=2)
async def test_the_address_limit_lives_in_redis_when_configured(connect: Any, redis_url: str, redis_prefix: str) -> None:
    with dorm(CONNECT_RATE_PER_SECOND=0.01, CONNECT_BURST=2, LIMITS_REDIS_URL=redis_url, LIMITS_KEY_PREFIX=redis_prefix):
        await connect("shared", userId="u", client="10.0.0.9")
        await connect("shared", userId="u", client="10.0.0.9")
        # A "third process" spent nothing; the shared counter in Redis already says no.
        refused = await connect("shared", userId="u", client="10.0.0.9", expect_welcome=False)
        assert (await refused.closed_with())[0] == 4429
        assert redis.Redis.from_url(redis_url).exists(redis_prefix + "conn:10.0.0.9")


@pytestmark_db
@dorm(LIMITS_REDIS_URL="redis://127.0.0.1:1/0", CONNECT_BURST=1, MESSAGE_BURST=1)
async def test_an_unreachable_limit_store_fails_open(connect: Any, caplog: pytest.LogCaptureFixture) -> None:
    a = await connect("open", userId="a")
    await connect("open", userId="b")  # burst 1 would refuse this one
    await a.send("draw", {"x": 1}, id="1")
    await a.send("draw", {"x": 2}, id="2")
    assert (await a.recv_type("ack"))["seq"] == 1
    assert (await a.recv_type("ack"))["seq"] == 2
    assert "limit store unavailable" in caplog.text


@pytestmark_db
async def test_max_connections_closes_4409_and_frees_on_leave(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="small", max_connections=2)
    await connect("small", userId="a")
    b = await connect("small", userId="b")
    full = await connect("small", userId="c", expect_welcome=False)
    assert await full.closed_with() == (4409, "room is full")
    await b.close()
    await asyncio.sleep(0.05)
    await connect("small", userId="c")


@pytestmark_db
@dorm(MAX_CONNECTIONS_PER_ROOM=1)
async def test_the_default_room_size_applies_to_rooms_without_their_own(connect: Any) -> None:
    await connect("dflt", userId="a")
    full = await connect("dflt", userId="b", expect_welcome=False)
    assert (await full.closed_with())[0] == 4409


# -- room places in Redis (distributed max_connections) ----------------------------


async def test_redis_places_are_shared_and_given_back(redis_url: str, redis_prefix: str) -> None:
    from rooms.occupancy import RedisOccupancy

    one, two = RedisOccupancy(redis_url, redis_prefix), RedisOccupancy(redis_url, redis_prefix)
    try:
        assert await one.occupy("r", "c1", 2) and await two.occupy("r", "c2", 2)
        assert not await two.occupy("r", "c3", 2)
        assert await one.occupy("r", "c1", 2)  # a place already held is held, not counted twice
        assert await one.occupy("other", "c3", 2)  # rooms are independent
        await one.vacate("r", "c1")
        assert await two.occupy("r", "c3", 2)
    finally:
        await one.close()
        await two.close()


async def test_redis_places_of_a_dead_process_free_themselves_and_live_ones_are_renewed(
    redis_url: str, redis_prefix: str
) -> None:
    from rooms.occupancy import RedisOccupancy

    dead = RedisOccupancy(redis_url, redis_prefix, lease_seconds=0.3)
    alive = RedisOccupancy(redis_url, redis_prefix, lease_seconds=0.3)
    try:
        assert await dead.occupy("r", "gone", 2) and await alive.occupy("r", "here", 2)
        await dead.close()  # the process dies: no vacate, no renewal
        await asyncio.sleep(0.7)  # two leases; "here" renewed meanwhile
        check = RedisOccupancy(redis_url, redis_prefix, lease_seconds=0.3)
        try:
            assert await check.occupy("r", "new", 2)  # "gone" freed its place
            assert not await check.occupy("r", "newer", 2)  # "here" still holds one
        finally:
            await check.close()
    finally:
        await alive.close()
