"""channels-redis's layer, sending in one round trip, with its receive clean-up made safe for outages.

After every receive, channels-redis pops the message's copy from the
channel's ``$inflight`` backup queue in a detached task. When Redis goes away
at that moment the task fails, nobody awaits it, and asyncio logs "Task
exception was never retrieved" as an ERROR with a traceback: noise in the
one log level operators page on, for a fault the process already handles
(the inbox loop and the bus reconnect on their own).

Here the clean-up retries a few times and then gives up with a warning. A
copy left behind is gone if Redis restarted empty; otherwise the next
receive moves it back into the queue, the duplicate channels-redis documents
for a cancelled clean-up (forwarded frames carry client ids, which the room
de-duplicates).

Sends take one round trip to Redis instead of four: channels-redis sends a
message as ZREMRANGEBYSCORE (expired entries), ZCOUNT (capacity), ZADD and
EXPIRE, each awaited in turn; here one Lua script does the same four steps,
atomically, on the same keys with the same serialized member and score, so
a receiver of either implementation reads it. The forwarder of a process
whose sockets are in a room run elsewhere sends through it for every batch
of frames: the four round trips were 30 % of such a process's CPU in the
two-process fan-out (docs/performance.md, "Seventh round").
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

log = logging.getLogger("dorm.cluster")

CLEANUP_ATTEMPTS = 3
CLEANUP_RETRY_SECONDS = 0.2

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


class DormRedisChannelLayer(RedisChannelLayer):
    _send_script: AsyncScript | None = None

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """channels-redis' ``send`` (same checks, keys, member and score) in one round trip."""
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
        connection = self.connection(index)
        if self._send_script is None:
            self._send_script = connection.register_script(SEND)
        now = time.time()
        sent = await self._send_script(
            keys=[self.prefix + channel_non_local_name],
            args=[int(now) - int(self.expiry), self.get_capacity(channel), now, self.serialize(message), int(self.expiry)],
            client=connection,
        )
        if not sent:
            raise ChannelFull()

    async def _clean_receive_backup(self, index: int, channel: str) -> None:
        for attempt in range(1, CLEANUP_ATTEMPTS + 1):
            try:
                await super()._clean_receive_backup(index, channel)
                return
            except (ConnectionError, TimeoutError, RedisError) as exc:
                if attempt == CLEANUP_ATTEMPTS:
                    log.warning("inbox backup clean-up failed attempts=%d error=%s", attempt, type(exc).__name__)
                    return
                await asyncio.sleep(CLEANUP_RETRY_SECONDS * attempt)
