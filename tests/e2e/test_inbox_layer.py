"""The inbox's channel layer (rooms/runtime/channel_layer.py) on the
machine's Redis: its one-round-trip send stores what channels-redis' own
send stores, so either side of a rolling deploy reads the other's messages,
and keeps channels-redis' capacity and expiry rules. Every send test runs
both ways Dorm sends: the layer's ``send`` (redis-py) and the forward loop's
``InboxSender`` (a connection of its own)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer

from rooms.runtime.channel_layer import DormRedisChannelLayer, InboxReceiver, InboxSender
from tests.e2e.server import free_port
from tests.e2e.services import REDIS_TEST_URL, PrivateRedis, check_redis


@pytest.fixture
def prefix() -> str:
    check_redis()
    return f"dorm-test-{uuid.uuid4().hex[:8]}"


Send = Callable[[str, dict[str, Any]], Awaitable[None]]


@pytest.fixture(params=["layer", "inbox-sender"])
async def dorm_send(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[DormRedisChannelLayer], Send]]:
    """How Dorm sends with a given layer: its ``send``, or an ``InboxSender`` on it."""
    senders: list[InboxSender] = []

    def way(layer: DormRedisChannelLayer) -> Send:
        if request.param == "layer":
            return layer.send
        sender = InboxSender(layer, 5.0)
        senders.append(sender)
        return sender.send

    yield way
    for sender in senders:
        await sender.aclose()


def _layers(prefix: str, **config: object) -> tuple[DormRedisChannelLayer, RedisChannelLayer]:
    return (DormRedisChannelLayer(hosts=[REDIS_TEST_URL], prefix=prefix, **config),  # type: ignore[arg-type]
            RedisChannelLayer(hosts=[REDIS_TEST_URL], prefix=prefix, **config))  # type: ignore[arg-type]


async def test_either_side_reads_the_others_messages(prefix: str, dorm_send: Callable[[DormRedisChannelLayer], Send]) -> None:
    dorm, plain = _layers(prefix)
    send = dorm_send(dorm)
    try:
        for sender, receiver in ((dorm, plain), (plain, dorm), (dorm, dorm)):
            inbox = await receiver.new_channel("dorm.inbox.")
            batch = {"type": "dorm.items", "items": [{"room": "r", "k": "frame", "p": "é" * 100}, {"room": "r", "k": "leave"}]}
            sender_send = send if sender is dorm else sender.send
            await sender_send(inbox, batch)
            await sender_send(inbox, {"type": "dorm.items", "items": []})
            assert await receiver.receive(inbox) == batch  # in order
            assert await receiver.receive(inbox) == {"type": "dorm.items", "items": []}
        # A general (non-process) channel too.
        await send("dorm.general", {"type": "x", "n": 1})
        assert await plain.receive("dorm.general") == {"type": "x", "n": 1}
    finally:
        await dorm.flush()
        await plain.close_pools()
        await dorm.close_pools()


async def test_the_stored_entry_is_channels_redis_own(prefix: str, dorm_send: Callable[[DormRedisChannelLayer], Send]) -> None:
    dorm, plain = _layers(prefix, expiry=30)
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        before = time.time()
        await dorm_send(dorm)("dorm.one", {"type": "x"})
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


async def test_capacity_refuses_and_adds_nothing_expired_entries_are_dropped(
    prefix: str, dorm_send: Callable[[DormRedisChannelLayer], Send]
) -> None:
    dorm, _ = _layers(prefix, capacity=2, expiry=30)
    send = dorm_send(dorm)
    client = redis.Redis.from_url(REDIS_TEST_URL)
    key = f"{prefix}dorm.full"
    try:
        await send("dorm.full", {"n": 1})
        await send("dorm.full", {"n": 2})
        with pytest.raises(ChannelFull):
            await send("dorm.full", {"n": 3})
        assert client.zcard(key) == 2
        # Entries older than the expiry are dropped before counting.
        client.zadd(key, {b"old-1": time.time() - 120, b"old-2": time.time() - 60})
        client.zremrangebyscore(key, f"({time.time() - 40}", "+inf")  # only the two old ones are left
        await send("dorm.full", {"n": 4})
        assert [dorm.deserialize(m) for m in client.zrange(key, 0, -1)] == [{"n": 4}]
    finally:
        client.delete(key)
        client.close()
        await dorm.close_pools()


async def test_the_script_survives_redis_forgetting_it(prefix: str, dorm_send: Callable[[DormRedisChannelLayer], Send]) -> None:
    dorm, _ = _layers(prefix)
    send = dorm_send(dorm)
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.script_flush()  # never loaded yet, on this Redis
        await send("dorm.again", {"n": 1})
        client.script_flush()  # as after a Redis restart
        await send("dorm.again", {"n": 2})
        assert await dorm.receive("dorm.again") == {"n": 1}
        assert await dorm.receive("dorm.again") == {"n": 2}
    finally:
        client.close()
        await dorm.close_pools()


def _command_calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in client.info("commandstats").items()}


async def test_a_waiting_message_costs_one_round_trip_and_its_copy_lives_until_the_next_receive(tmp_path: Path) -> None:
    check_redis()  # stands for "Redis is installed and runs here"
    server = PrivateRedis(tmp_path, free_port())
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    dorm = DormRedisChannelLayer(hosts=[url], prefix="p")
    plain = RedisChannelLayer(hosts=[url], prefix="p")
    client = redis.Redis.from_url(url)
    try:
        inbox = await dorm.new_channel("dorm.inbox.")
        backup = f"p{dorm.non_local_name(inbox)}$inflight"
        for n in range(3):
            await plain.send(inbox, {"n": n})
        assert await dorm.receive(inbox) == {"n": 0}  # loads the script
        assert client.zcard(backup) == 1  # the copy of the message just handed over
        before = _command_calls(client)
        assert await dorm.receive(inbox) == {"n": 1}
        await asyncio.sleep(0.05)  # channels-redis' clean-up task has run
        calls = _command_calls(client)
        spent = {name: calls[name] - before.get(name, 0) for name in calls if calls[name] != before.get(name, 0)}
        spent.pop("info", None)  # this test's own
        # One script (its ZREM, ZRANGE, DEL, ZPOPMIN and ZADD run inside it) and no other command.
        assert spent.pop("evalsha") == 1
        assert not {k for k in spent if k not in ("zrem", "zrange", "del", "zpopmin", "zadd")}, spent
        # The copy of {"n": 0} was dropped by that receive; {"n": 1}'s stays until the next.
        assert [dorm.deserialize(m)["n"] for m in client.zrange(backup, 0, -1)] == [1]
        assert await dorm.receive(inbox) == {"n": 2}
        assert [dorm.deserialize(m)["n"] for m in client.zrange(backup, 0, -1)] == [2]
        # An empty inbox waits (BZPOPMIN) and gets the next message as it comes.
        waiting = asyncio.ensure_future(dorm.receive(inbox))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await plain.send(inbox, {"n": 3})
        assert await asyncio.wait_for(waiting, 5) == {"n": 3}
    finally:
        client.close()
        await dorm.close_pools()
        await plain.close_pools()
        server.stop()


async def test_a_receive_cancelled_after_its_pop_loses_nothing(prefix: str) -> None:
    dorm, plain = _layers(prefix)
    try:
        inbox = await dorm.new_channel("dorm.inbox.")
        key = prefix + dorm.non_local_name(inbox)
        await plain.send(inbox, {"n": 1})
        await plain.send(inbox, {"n": 2})
        # The pop happened in Redis but its receive never handed the message
        # over (cancelled): the next receive puts it back first.
        assert await dorm._brpop_with_clean(dorm.consistent_hash(inbox), key, timeout=1) is not None
        assert await dorm.receive(inbox) == {"n": 1}
        assert await dorm.receive(inbox) == {"n": 2}
        # A message handed over is never put back: its copy goes by member.
        await plain.send(inbox, {"n": 3})
        assert await dorm.receive(inbox) == {"n": 3}
        await plain.send(inbox, {"n": 4})
        assert await dorm.receive(inbox) == {"n": 4}
    finally:
        await dorm.flush()
        await dorm.close_pools()
        await plain.close_pools()


async def test_the_inbox_sender_reconnects_after_its_connection_is_killed(prefix: str) -> None:
    dorm, _ = _layers(prefix)
    sender = InboxSender(dorm, 5.0)
    admin = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        await sender.send("dorm.killed", {"n": 1})
        (connection,) = sender._connections.values()
        assert connection._writer is not None
        host, port = connection._writer.get_extra_info("sockname")[:2]
        assert admin.client_kill_filter(addr=f"{host}:{port}") == 1
        with pytest.raises(ConnectionError):
            await sender.send("dorm.killed", {"n": "lost"})
        await sender.send("dorm.killed", {"n": 2})  # a new connection
        assert await dorm.receive("dorm.killed") == {"n": 1}
        assert await dorm.receive("dorm.killed") == {"n": 2}
    finally:
        admin.close()
        await sender.aclose()
        await dorm.close_pools()


async def test_the_inbox_sender_leaves_a_host_of_options_to_redis_py(prefix: str) -> None:
    """A host given as options (here an address with a timeout) is redis-py's to
    connect to: the sender falls back to the layer's own send."""
    dorm = DormRedisChannelLayer(hosts=[{"address": REDIS_TEST_URL, "socket_timeout": 5}], prefix=prefix)
    sender = InboxSender(dorm, 5.0)
    try:
        await sender.send("dorm.options", {"n": 1})
        assert not sender._connections
        assert await dorm.receive("dorm.options") == {"n": 1}
    finally:
        await sender.aclose()
        await dorm.close_pools()


# -- the cluster's InboxReceiver ----------------------------------------------------


async def test_the_inbox_receiver_reads_what_every_sender_sends_in_order(prefix: str) -> None:
    """channels-redis' send (a process of another release, a rolling deploy),
    the layer's and the forward loop's: one inbox, in order, every message
    waiting in one receive."""
    dorm, plain = _layers(prefix)
    sender = InboxSender(dorm, 5.0)
    inbox = await dorm.new_channel("dorm.inbox.")
    receiver = InboxReceiver(dorm, inbox, 5.0)
    try:
        batches = [{"type": "dorm.items", "items": [{"room": "r", "k": "frame", "p": "é" * n}]} for n in (0, 1, 1000, 600_000)]
        for send, batch in zip((plain.send, dorm.send, sender.send, plain.send), batches, strict=True):
            await send(inbox, batch)
        assert await receiver.receive() == batches
        assert receiver._connection is not None and receiver._connection._writer is not None  # its own connection
    finally:
        await receiver.aclose()
        await sender.aclose()
        await dorm.flush()
        await dorm.close_pools()
        await plain.close_pools()


async def test_the_inbox_receiver_takes_everything_waiting_in_one_round_trip(tmp_path: Path) -> None:
    check_redis()
    server = PrivateRedis(tmp_path, free_port())
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    dorm = DormRedisChannelLayer(hosts=[url], prefix="p")
    client = redis.Redis.from_url(url)
    inbox = await dorm.new_channel("dorm.inbox.")
    receiver = InboxReceiver(dorm, inbox, 5.0)
    backup = f"p{dorm.non_local_name(inbox)}$inflight"

    async def send(*numbers: int) -> None:
        for n in numbers:
            await dorm.send(inbox, {"n": n})

    try:
        await send(0)
        assert await receiver.receive() == [{"n": 0}]  # loads the script
        await send(1, 2, 3)
        before = _command_calls(client)
        assert await receiver.receive() == [{"n": 1}, {"n": 2}, {"n": 3}]
        calls = _command_calls(client)
        spent = {name: calls[name] - before.get(name, 0) for name in calls if calls[name] != before.get(name, 0)}
        spent.pop("info", None)  # this test's own
        assert spent.pop("evalsha") == 1
        assert not {k for k in spent if k not in ("zrem", "zrange", "del", "zpopmin", "zadd")}, spent
        # The copy of {"n": 0} was dropped by that receive; the three others' stay until the next.
        assert sorted(dorm.deserialize(m)["n"] for m in client.zrange(backup, 0, -1)) == [1, 2, 3]
        # At most MAX_MESSAGES a receive, the oldest first.
        receiver.MAX_MESSAGES = 2
        await send(4, 5, 6)
        assert await receiver.receive() == [{"n": 4}, {"n": 5}]
        assert sorted(dorm.deserialize(m)["n"] for m in client.zrange(backup, 0, -1)) == [4, 5]
        assert await receiver.receive() == [{"n": 6}]
        # An empty inbox waits (BZPOPMIN), past the block's own timeout, for the next message.
        receiver.block_seconds = 1
        waiting = asyncio.ensure_future(receiver.receive())
        await asyncio.sleep(1.5)
        assert not waiting.done()
        await send(7)
        assert await asyncio.wait_for(waiting, 5) == [{"n": 7}]
        assert client.zcard(backup) == 0  # what BZPOPMIN handed over needs no copy
    finally:
        client.close()
        await receiver.aclose()
        await dorm.close_pools()
        server.stop()


async def test_an_inbox_receive_cancelled_anywhere_loses_and_repeats_nothing(prefix: str) -> None:
    """Cancelled before its write, during the script, while its reply is on
    the way, or after it: each message is handed over once, in order."""
    dorm, _ = _layers(prefix)
    inbox = await dorm.new_channel("dorm.inbox.")
    receiver = InboxReceiver(dorm, inbox, 5.0)
    receiver.MAX_MESSAGES = 2
    sent: list[int] = []
    received: list[int] = []
    try:
        for steps in range(12):
            for _ in range(3):
                sent.append(len(sent))
                await dorm.send(inbox, {"n": sent[-1]})
            receiving = asyncio.ensure_future(receiver.receive())
            for _ in range(steps):
                await asyncio.sleep(0)
            receiving.cancel()
            try:
                received += [m["n"] for m in await receiving]
            except asyncio.CancelledError:
                pass
            while len(received) < len(sent):
                received += [m["n"] for m in await asyncio.wait_for(receiver.receive(), 5)]
        assert received == sent
        # Cancelled while waiting on an empty inbox: the next receive gets what comes.
        waiting = asyncio.ensure_future(receiver.receive())
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.2)  # Redis has seen the dropped connection's close
        await dorm.send(inbox, {"n": "after"})
        assert await asyncio.wait_for(receiver.receive(), 5) == [{"n": "after"}]
    finally:
        await receiver.aclose()
        await dorm.flush()
        await dorm.close_pools()


async def test_the_inbox_receiver_reconnects_after_its_connection_is_killed(prefix: str) -> None:
    dorm, _ = _layers(prefix)
    inbox = await dorm.new_channel("dorm.inbox.")
    receiver = InboxReceiver(dorm, inbox, 5.0)
    admin = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        await dorm.send(inbox, {"n": 1})
        assert await receiver.receive() == [{"n": 1}]
        waiting = asyncio.ensure_future(receiver.receive())
        await asyncio.sleep(0.2)  # blocked in BZPOPMIN
        connection = receiver._connection
        assert connection is not None and connection._writer is not None
        host, port = connection._writer.get_extra_info("sockname")[:2]
        assert admin.client_kill_filter(addr=f"{host}:{port}") == 1
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(waiting, 5)
        await dorm.send(inbox, {"n": 2})
        assert await asyncio.wait_for(receiver.receive(), 5) == [{"n": 2}]  # a new connection
        admin.script_flush()  # as after a Redis restart: EVAL loads the script again
        await dorm.send(inbox, {"n": 3})
        assert await asyncio.wait_for(receiver.receive(), 5) == [{"n": 3}]
    finally:
        admin.close()
        await receiver.aclose()
        await dorm.flush()
        await dorm.close_pools()


async def test_an_unreadable_inbox_message_is_dropped_with_a_warning_and_the_rest_arrive(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    dorm, _ = _layers(prefix)
    inbox = await dorm.new_channel("dorm.inbox.")
    receiver = InboxReceiver(dorm, inbox, 5.0)
    client = redis.Redis.from_url(REDIS_TEST_URL)
    key = prefix + dorm.non_local_name(inbox)
    # Another serializer's (or another key's) message, and msgpack that is not a map.
    garbage = {b"r" * 12 + b"\xc1 not msgpack": 0, b"r" * 12 + b"\x05": 0}
    try:
        # Scored as sent, or the next send drops them as expired.
        now = time.time()
        client.zadd(key, {member: now + i / 1000 for i, member in enumerate(garbage)})
        await dorm.send(inbox, {"n": 1})
        with caplog.at_level("WARNING", logger="dorm.cluster"):
            assert await receiver.receive() == [{"n": 1}]
            # Nothing readable waiting: the receive goes on to wait for the next.
            now = time.time()
            client.zadd(key, {member: now + i / 1000 for i, member in enumerate(garbage)})
            waiting = asyncio.ensure_future(receiver.receive())
            await asyncio.sleep(0.2)
            await dorm.send(inbox, {"n": 2})
            assert await asyncio.wait_for(waiting, 5) == [{"n": 2}]
        dropped = [r.getMessage() for r in caplog.records if "inbox message dropped" in r.getMessage()]
        assert dropped == ["inbox message dropped bytes=25 error=FormatError",
                           "inbox message dropped bytes=13 error=not_a_map type=int"] * 2
        assert client.zcard(key) == 0
    finally:
        client.close()
        await receiver.aclose()
        await dorm.flush()
        await dorm.close_pools()


async def test_the_inbox_receiver_leaves_a_host_of_options_to_redis_py(prefix: str) -> None:
    dorm = DormRedisChannelLayer(hosts=[{"address": REDIS_TEST_URL, "socket_timeout": 5}], prefix=prefix)
    inbox = await dorm.new_channel("dorm.inbox.")
    receiver = InboxReceiver(dorm, inbox, 5.0)
    try:
        await dorm.send(inbox, {"n": 1})
        assert await receiver.receive() == [{"n": 1}]
        assert receiver._connection is None
    finally:
        await receiver.aclose()
        await dorm.flush()
        await dorm.close_pools()
