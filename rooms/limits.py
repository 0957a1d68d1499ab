"""Admission and rate limits (PROTOCOL.md sections 1 and 5).

The consumer asks these questions on every connection and every frame:

- ``admit_connection``: new connections per client address, a token bucket
  (``CONNECT_RATE_PER_SECOND``, ``CONNECT_BURST``); refused with 4429.
- ``admit_occupancy``: connections per room (the room's ``max_connections``,
  else ``MAX_CONNECTIONS_PER_ROOM``); refused with 4409.
- ``admit_message``: messages per user per room, a token bucket
  (``MESSAGE_RATE_PER_SECOND``, ``MESSAGE_BURST``); refused softly with
  ``rate_limited`` and the milliseconds to wait, the connection stays.

The buckets live in process memory, or in Redis when ``LIMITS_REDIS_URL`` is
set (distributed mode) so that a limit holds across processes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from rooms.auth import Identity
from rooms.buckets.base import TokenBuckets
from rooms.buckets.memory import MemoryBuckets
from rooms.conf import dorm_settings
from rooms.protocol import CloseCode

log = logging.getLogger("dorm.security")

# One warning per this many seconds while Redis is failing, not one per frame.
REDIS_ERROR_LOG_EVERY_SECONDS = 10.0

_buckets: tuple[asyncio.AbstractEventLoop, str, TokenBuckets] | None = None
_last_error_log = 0.0


def buckets() -> TokenBuckets:
    """The buckets of the running event loop (a Redis client is bound to one loop)."""
    global _buckets
    loop = asyncio.get_running_loop()
    url = str(dorm_settings.LIMITS_REDIS_URL or "")
    if _buckets is not None and _buckets[0] is loop and _buckets[1] == url:
        return _buckets[2]
    backend: TokenBuckets
    if url:
        from rooms.buckets.redis import RedisBuckets

        backend = RedisBuckets(url, str(dorm_settings.LIMITS_KEY_PREFIX))
    else:
        backend = MemoryBuckets()
    _buckets = (loop, url, backend)
    return backend


async def reset() -> None:
    """Forget every bucket and close the store's connections (tests, shutdown)."""
    global _buckets
    current, _buckets = _buckets, None
    if current is not None and current[0] is asyncio.get_running_loop():
        await current[2].close()


async def _take(key: str, rate: float, burst: int) -> float:
    try:
        return await buckets().take(key, rate, burst)
    except Exception as exc:
        # Fail open: a Redis outage must not take every room down with it.
        # The frame-size limits, the abuse counter and max_connections (local)
        # still hold while Redis is away.
        global _last_error_log
        now = time.monotonic()
        if now - _last_error_log > REDIS_ERROR_LOG_EVERY_SECONDS:
            _last_error_log = now
            log.warning("limit store unavailable, admitting error=%s", type(exc).__name__)
        return 0.0


async def admit_connection(client_address: str, room: str) -> tuple[int, str] | None:
    """None to admit, or ``(close code, reason)`` to refuse."""
    rate = float(dorm_settings.CONNECT_RATE_PER_SECOND)
    if rate <= 0:
        return None
    wait = await _take(f"conn:{client_address}", rate, int(dorm_settings.CONNECT_BURST))
    if wait > 0:
        return CloseCode.TOO_MANY_CONNECTIONS, f"too many connection attempts, retry in {math.ceil(wait)} s"
    return None


def admit_occupancy(current: int, max_connections: int | None) -> tuple[int, str] | None:
    """``current``: the room's connections before this one."""
    limit = max_connections if max_connections is not None else dorm_settings.MAX_CONNECTIONS_PER_ROOM
    if limit is not None and current >= int(limit):
        return CloseCode.ROOM_FULL, "room is full"
    return None


async def admit_message(identity: Identity, room: str) -> int | None:
    """None to admit, or the milliseconds the sender should wait."""
    rate = float(dorm_settings.MESSAGE_RATE_PER_SECOND)
    if rate <= 0:
        return None
    wait = await _take(f"msg:{room}:{identity.user_id}", rate, int(dorm_settings.MESSAGE_BURST))
    if wait > 0:
        return max(1, math.ceil(wait * 1000))
    return None
