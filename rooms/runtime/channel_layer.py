"""channels-redis's layer for the inbox, with fewer round trips to Redis.

The inbox's cost is its round trips: each is a write that wakes Redis and a
read that waits for it, and in the two-process fan-out they were a third of
the forwarding process's CPU and a fifth of the owner's (docs/performance.md,
"Seventh round"). Keys, members, scores, capacity and expiry are channels-
redis' own, so a process of either implementation reads the other's
messages (a rolling deploy).

**Send**: channels-redis awaits ZREMRANGEBYSCORE (expired entries), ZCOUNT
(capacity), ZADD and EXPIRE in turn; here one Lua script does the same four
steps, atomically: one round trip instead of four.

**Receive**: channels-redis runs a script that puts back the copies left in
the channel's ``$inflight`` backup queue, a BZPOPMIN, a ZADD of the popped
message's backup copy, and, in a detached task, a ZPOPMIN that drops that
copy once the message is handed over: four round trips. Here the copy is
dropped by the next receive, in its first script, which also puts back the
other copies and pops the next message with its backup copy when one is
waiting: one round trip for a waiting message, three for an empty inbox
(the script, BZPOPMIN, ZADD). Dropping the copy later also means there is
no detached task to fail when Redis goes away (it logged "Task exception
was never retrieved"). The copy is dropped by member (ZREM, which may run
twice), never by position, so a receive cancelled mid-script loses nothing:
its popped message waits in the backup queue and the next receive puts it
back, the duplicate channels-redis documents for cancellations (forwarded
frames carry client ids, which the room de-duplicates).

**Connections of Dorm's own**: the cluster sends (``InboxSender``: the
SEND script) and receives (``InboxReceiver``: RECEIVE for every message
waiting, up to 64) on ``CommandConnection``s
(``rooms/runtime/redis_pubsub.py``) instead of redis-py's client: per
message, the command path around one round trip cost more than the round
trip (docs/performance.md, "Seventeenth round" and "Eighteenth round").
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from redis.commands.core import AsyncScript

from rooms.runtime.redis_pubsub import CommandConnection

log = logging.getLogger("dorm.cluster")

# channels-redis' send in one step: drop expired entries, refuse at capacity,
# add the member, renew the key's expiry. 1: sent, 0: full.
SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# The start of a receive, for up to ARGV[1] messages: drop the backup
# copies of the members handed over last (ARGV[2...], none at first), put
# the other copies back in the queue as channels-redis' clean-up script
# does, then pop the oldest messages, each keeping its backup copy. Returns
# the members popped (an empty array when the queue is empty). The layer's
# receive takes one; the cluster's ``InboxReceiver`` every one waiting.
RECEIVE = """
if #ARGV > 1 then
  redis.call('ZREM', KEYS[2], unpack(ARGV, 2))
end
local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
  redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', KEYS[2])
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
if #popped == 0 then
  return {}
end
local copies, members = {}, {}
for i = 1, #popped, 2 do
  copies[#copies + 1] = popped[i + 1]
  copies[#copies + 1] = popped[i]
  members[#members + 1] = popped[i]
end
redis.call('ZADD', KEYS[2], unpack(copies))
return members
"""


class DormRedisChannelLayer(RedisChannelLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_script: AsyncScript | None = None
        self._receive_script: AsyncScript | None = None
        # Channel key -> the member last popped (its backup copy is kept
        # until the message is handed over) and the member handed over
        # (its copy is dropped by the next receive).
        self._popped: dict[str, bytes] = {}
        self._handed_over: dict[str, bytes] = {}

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """channels-redis' ``send`` (same checks, keys, member and score) in one round trip."""
        index, keys, args = self.send_script_call(channel, message)
        connection = self.connection(index)
        if self._send_script is None:
            self._send_script = connection.register_script(SEND)
        if not await self._send_script(keys=keys, args=args, client=connection):
            raise ChannelFull()

    def send_script_call(self, channel: str, message: dict[str, Any]) -> tuple[int, list[str], list[Any]]:
        """A send as the SEND script's call: the host's index, its keys and arguments."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        channel_non_local_name = channel
        if "!" in channel:
            message = dict(message.items())
            message["__asgi_channel__"] = channel
            channel_non_local_name = self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            index = next(self._send_index_generator)
        now = time.time()
        keys = [self.prefix + channel_non_local_name]
        args = [int(now) - int(self.expiry), self.get_capacity(channel), now, self.serialize(message), int(self.expiry)]
        return index, keys, args

    async def _brpop_with_clean(self, index: int, channel: str, timeout: float) -> bytes | None:
        backup = self._backup_channel_name(channel)
        connection = self.connection(index)
        if self._receive_script is None:
            self._receive_script = connection.register_script(RECEIVE)
        handed_over = self._handed_over.get(channel)
        args = [1] if handed_over is None else [1, handed_over]
        members = await self._receive_script(keys=[channel, backup], args=args, client=connection)
        if handed_over is not None:
            del self._handed_over[channel]  # its copy is gone (the next one is set after this returns)
        member = members[0] if members else None
        if member is None:
            # Empty: wait for one as channels-redis does.
            result = await connection.bzpopmin(channel, timeout=timeout)
            if result is None:
                return None
            _, member, score = result
            await connection.zadd(backup, {member: float(score)})
        self._popped[channel] = member
        return member

    async def _clean_receive_backup(self, index: int, channel: str) -> None:
        # channels-redis calls this once the message is handed over; its copy
        # is dropped by the next receive's script (no round trip here).
        member = self._popped.pop(channel, None)
        if member is not None:
            self._handed_over[channel] = member


class InboxSender:
    """The forwarder's sends to other processes' inboxes, on a connection of
    its own per Redis host: the SEND script by ``EVALSHA``, packed, its
    reply parsed by hiredis (``CommandConnection``), not through redis-py's
    client. Same keys, member, score, capacity and expiry as
    :meth:`DormRedisChannelLayer.send`, which it falls back to for a host
    that is not a plain URL (a sentinel, a dict of options).

    For one task on one event loop (the cluster's forward loop). Each
    forwarded batch is one send: with a commit per message or two, nearly
    one per forwarded frame, and redis-py's command path cost more than the
    round trip (docs/performance.md, "Seventeenth round").
    """

    def __init__(self, layer: DormRedisChannelLayer, timeout: float) -> None:
        self.layer = layer
        self.timeout = timeout
        self._connections: dict[int, CommandConnection] = {}
        self._sha = hashlib.sha1(SEND.encode()).hexdigest()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        index, keys, args = self.layer.send_script_call(channel, message)
        connection = self._connections.get(index)
        if connection is None:
            url = plain_url(self.layer, index)
            if url is None:
                await self.layer.send(channel, message)
                return
            connection = self._connections[index] = CommandConnection(url)
        sent = await run_script(connection, SEND, self._sha, keys, args, self.timeout)
        if isinstance(sent, Exception):
            raise ConnectionError(f"inbox send refused by Redis: {sent}")
        if not sent:
            raise ChannelFull()

    async def aclose(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            await connection.aclose()


class InboxReceiver:
    """The owner's receives from its own inbox on a connection of its own:
    the RECEIVE script by ``EVALSHA`` and, on an empty inbox, BZPOPMIN,
    where :meth:`DormRedisChannelLayer.receive` goes through channels-redis'
    receive (its lock, its buffers, a clean-up task per message) and
    redis-py's command path. A receive takes every message waiting, up to
    ``MAX_MESSAGES``, in one round trip: an owner whose core is busy finds
    several.

    For one task (the cluster's inbox loop), the only reader of its
    channel's key: the layer's process-local channels share one key per
    client prefix (``dorm.inbox.<client prefix>!``), and a process has one
    cluster, so one inbox. A message sent to any channel of that key is this
    process's, and is returned. A host that is not a plain URL (a sentinel,
    a dict of options) falls back to the layer's receive.

    What is lost, and what is not: the script's pop keeps a backup copy of
    each message, dropped by the next receive's script by member, so a
    receive cancelled or failed while the script's reply was on its way
    loses nothing: the next receive puts the messages back first. What
    BZPOPMIN hands over is returned with no await in between, so it needs
    no copy (channels-redis adds one with a ZADD after the pop, which a
    cancellation between the two would lose); as in channels-redis, a
    connection lost while that reply is on its way loses the message. A
    message that does not deserialize (a sender with another serializer or
    encryption key) is dropped with a warning that gives its size.
    """

    MAX_MESSAGES = 64

    def __init__(self, layer: DormRedisChannelLayer, channel: str, timeout: float) -> None:
        assert "!" in channel, "an inbox is a process-local channel"
        self.layer = layer
        self.channel = channel
        real = layer.non_local_name(channel)
        # channels-redis' receive: the host by the channel's non-local name.
        url = plain_url(layer, layer.consistent_hash(real))
        self._connection = CommandConnection(url) if url is not None else None
        self._keys = [layer.prefix + real, layer._backup_channel_name(layer.prefix + real)]
        self._handed_over: list[bytes] = []  # the members the script last popped; their copies go at the next receive
        self._sha = hashlib.sha1(RECEIVE.encode()).hexdigest()
        self.timeout = timeout  # a command unanswered this long fails
        self.block_seconds = layer.brpop_timeout  # one wait of an empty inbox

    async def receive(self) -> list[dict[str, Any]]:
        """The messages waiting (at least one, in order), waiting for one as
        long as it takes. A failed round trip is a ``ConnectionError``."""
        connection = self._connection
        if connection is None:
            return [await self.layer.receive(self.channel)]
        while True:
            args = [self.MAX_MESSAGES, *self._handed_over]
            members = await run_script(connection, RECEIVE, self._sha, self._keys, args, self.timeout)
            _refused(members)
            self._handed_over = members  # the script dropped the previous copies
            while not members:
                (popped,) = await connection.call([("BZPOPMIN", self._keys[0], self.block_seconds)],
                                                  self.block_seconds + self.timeout)
                _refused(popped)
                if popped is not None:
                    members = [popped[1]]
            # Handed over from here on, read or not: a message that cannot be
            # read is not put back to fail every receive after it.
            messages = [message for member in members if (message := self._read(member)) is not None]
            if messages:
                return messages

    def _read(self, member: bytes) -> dict[str, Any] | None:
        try:
            message = self.layer.deserialize(member)
        except Exception as exc:
            log.warning("inbox message dropped bytes=%d error=%s", len(member), type(exc).__name__)
            return None
        if not isinstance(message, dict):
            log.warning("inbox message dropped bytes=%d error=not_a_map type=%s", len(member), type(message).__name__)
            return None
        message.pop("__asgi_channel__", None)
        return message

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.aclose()


def _refused(reply: Any) -> None:
    if isinstance(reply, Exception):
        raise ConnectionError(f"inbox receive refused by Redis: {reply}")


def plain_url(layer: RedisChannelLayer, index: int) -> str | None:
    """The layer's host ``index`` as a URL, if it is given as one (a
    connection of Dorm's own can open it); ``None`` for a sentinel or a
    dict of options, which stay on redis-py."""
    host = layer.hosts[index]
    if set(host) != {"address"} or not isinstance(host["address"], str):
        return None
    return str(host["address"])


async def run_script(connection: CommandConnection, script: str, sha: str, keys: list[str], args: list[Any], timeout: float) -> Any:
    """One call of a Lua script by ``EVALSHA``, by ``EVAL`` when Redis does
    not know it (first use on this Redis, or its scripts were flushed): its
    reply, an error reply as an exception object."""
    (reply,) = await connection.call([("EVALSHA", sha, len(keys), *keys, *args)], timeout)
    if isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"):
        (reply,) = await connection.call([("EVAL", script, len(keys), *keys, *args)], timeout)
    return reply
