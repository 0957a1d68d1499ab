"""channels-redis's layer with its receive clean-up made safe for outages.

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
"""

from __future__ import annotations

import asyncio
import logging

from channels_redis.core import RedisChannelLayer
from redis.exceptions import RedisError

log = logging.getLogger("dorm.cluster")

CLEANUP_ATTEMPTS = 3
CLEANUP_RETRY_SECONDS = 0.2


class DormRedisChannelLayer(RedisChannelLayer):
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
