"""The inbox's channel layer (rooms/runtime/channel_layer.py) on the
machine's Redis: its one-round-trip send stores what channels-redis' own
send stores, so either side of a rolling deploy reads the other's messages,
and keeps channels-redis' capacity and expiry rules."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer

from rooms.runtime.channel_layer import DormRedisChannelLayer
from tests.e2e.services import REDIS_TEST_URL, check_redis


@pytest.fixture
def prefix() -> str:
    check_redis()
    return f"dorm-test-{uuid.uuid4().hex[:8]}"


def _layers(prefix: str, **config: object) -> tuple[DormRedisChannelLayer, RedisChannelLayer]:
    return (DormRedisChannelLayer(hosts=[REDIS_TEST_URL], prefix=prefix, **config),  # type: ignore[arg-type]
            RedisChannelLayer(hosts=[REDIS_TEST_URL], prefix=prefix, **config))  # type: ignore[arg-type]


async def test_either_side_reads_the_others_messages(prefix: str) -> None:
    dorm, plain = _layers(prefix)
    try:
        for sender, receiver in ((dorm, plain), (plain, dorm), (dorm, dorm)):
            inbox = await receiver.new_channel("dorm.inbox.")
            batch = {"type": "dorm.items", "items": [{"room": "r", "k": "frame", "p": "é" * 100}, {"room": "r", "k": "leave"}]}
            await sender.send(inbox, batch)
            await sender.send(inbox, {"type": "dorm.items", "items": []})
            assert await receiver.receive(inbox) == batch  # in order
            assert await receiver.receive(inbox) == {"type": "dorm.items", "items": []}
        # A general (non-process) channel too.
        await dorm.send("dorm.general", {"type": "x", "n": 1})
        assert await plain.receive("dorm.general") == {"type": "x", "n": 1}
    finally:
        await dorm.flush()
        await plain.close_pools()
        await dorm.close_pools()


async def test_the_stored_entry_is_channels_redis_own(prefix: str) -> None:
    dorm, plain = _layers(prefix, expiry=30)
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        before = time.time()
        await dorm.send("dorm.one", {"type": "x"})
        await plain.send("dorm.two", {"type": "x"})
        after = time.time()
        ours, theirs = (client.zrange(f"{prefix}dorm.{n}", 0, -1, withscores=True) for n in ("one", "two"))
        assert len(ours) == len(theirs) == 1
        assert dorm.deserialize(ours[0][0]) == plain.deserialize(theirs[0][0]) == {"type": "x"}
        assert before <= ours[0][1] <= after  # scored by send time, as channels-redis does
        assert 28 <= client.ttl(f"{prefix}dorm.one") <= 30 and 28 <= client.ttl(f"{prefix}dorm.two") <= 30
    finally:
        client.delete(f"{prefix}dorm.one", f"{prefix}dorm.two")
        client.close()
        await dorm.close_pools()
        await plain.close_pools()


async def test_capacity_refuses_and_adds_nothing_expired_entries_are_dropped(prefix: str) -> None:
    dorm, _ = _layers(prefix, capacity=2, expiry=30)
    client = redis.Redis.from_url(REDIS_TEST_URL)
    key = f"{prefix}dorm.full"
    try:
        await dorm.send("dorm.full", {"n": 1})
        await dorm.send("dorm.full", {"n": 2})
        with pytest.raises(ChannelFull):
            await dorm.send("dorm.full", {"n": 3})
        assert client.zcard(key) == 2
        # Entries older than the expiry are dropped before counting.
        client.zadd(key, {b"old-1": time.time() - 120, b"old-2": time.time() - 60})
        client.zremrangebyscore(key, f"({time.time() - 40}", "+inf")  # only the two old ones are left
        await dorm.send("dorm.full", {"n": 4})
        assert [dorm.deserialize(m) for m in client.zrange(key, 0, -1)] == [{"n": 4}]
    finally:
        client.delete(key)
        client.close()
        await dorm.close_pools()


async def test_the_script_survives_redis_forgetting_it(prefix: str) -> None:
    dorm, _ = _layers(prefix)
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        await dorm.send("dorm.again", {"n": 1})
        client.script_flush()  # as after a Redis restart
        await dorm.send("dorm.again", {"n": 2})
        assert await dorm.receive("dorm.again") == {"n": 1}
        assert await dorm.receive("dorm.again") == {"n": 2}
    finally:
        client.close()
        await dorm.close_pools()
