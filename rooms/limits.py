"""Admission and rate limits (PROTOCOL.md sections 1 and 5).

The consumer asks these questions on every connection and every frame:

- ``admit_connection``: new connections per client address, a token bucket
  (``CONNECT_RATE_PER_SECOND``, ``CONNECT_BURST``); refused with 4429.
- ``admit_occupancy``: connections per room (the room's ``max_connections``,
  else ``MAX_CONNECTIONS_PER_ROOM``); refused with 4409. ``release_occupancy``
  gives the place back when the connection ends.
- ``admit_message``: messages per user per room, a token bucket
  (``MESSAGE_RATE_PER_SECOND``, ``MESSAGE_BURST``); refused softly with
  ``rate_limited`` and the milliseconds to wait, the connection stays.

The counters (``rooms/buckets/``, ``rooms/occupancy.py``) live in process
memory, or in Redis when ``LIMITS_REDIS_URL`` is set (distributed mode) so
that a limit holds across processes.
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
from rooms.occupancy import MemoryOccupancy, Occupancy
from rooms.protocol import CloseCode

log = logging.getLogger("dorm.security")

# One warning per this many seconds while Redis is failing, not one per frame.
REDIS_ERROR_LOG_EVERY_SECONDS = 10.0


class _Stores:
    """The counters of one event loop (a Redis client is bound to one loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str, prefix: str) -> None:
        self.loop = loop
        self.key = (url, prefix)
        self.buckets: TokenBuckets
        self.occupancy: Occupancy
        if url:
            from rooms.buckets.redis import RedisBuckets
            from rooms.occupancy import RedisOccupancy

            self.buckets = RedisBuckets(url, prefix)
            self.occupancy = RedisOccupancy(url, prefix)
        else:
            self.buckets = MemoryBuckets()
            self.occupancy = MemoryOccupancy()

    async def close(self) -> None:
        await self.buckets.close()
        await self.occupancy.close()


_stores: _Stores | None = None
_last_error_log = 0.0
# Background work (place releases from the consumer's synchronous
# disconnect, closing a replaced store), kept referenced until done.
_releases: set[asyncio.Task[None]] = set()


def stores() -> _Stores:
    global _stores
    loop = asyncio.get_running_loop()
    url = str(dorm_settings.LIMITS_REDIS_URL or "")
    prefix = str(dorm_settings.LIMITS_KEY_PREFIX)
    if _stores is None or _stores.loop is not loop or _stores.key != (url, prefix):
        previous, _stores = _stores, _Stores(loop, url, prefix)
        if previous is not None and previous.loop is loop:
            # The settings changed (tests): let go of the old store's connections.
            _keep_until_done(loop.create_task(previous.close()))
    return _stores


def _keep_until_done(task: asyncio.Task[None]) -> None:
    _releases.add(task)
    task.add_done_callback(_releases.discard)


def buckets() -> TokenBuckets:
    return stores().buckets


async def reset() -> None:
    """Forget every counter and close the store's connections (tests, shutdown)."""
    global _stores
    current, _stores = _stores, None
    if current is not None and current.loop is asyncio.get_running_loop():
        if _releases:
            await asyncio.gather(*_releases, return_exceptions=True)
        await current.close()


def _store_failed(exc: Exception) -> None:
    # Fail open: a Redis outage must not take every room down with it. The
    # frame-size limits and the abuse counter still hold while Redis is away.
    global _last_error_log
    now = time.monotonic()
    if now - _last_error_log > REDIS_ERROR_LOG_EVERY_SECONDS:
        _last_error_log = now
        log.warning("limit store unavailable, admitting error=%s", type(exc).__name__)


async def _take(key: str, rate: float, burst: int) -> float:
    try:
        return await buckets().take(key, rate, burst)
    except Exception as exc:
        _store_failed(exc)
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


async def admit_occupancy(room: str, connection_id: str, max_connections: int | None) -> tuple[int, str] | bool:
    """False: the room has no size limit (nothing was counted, nothing to release).

    True: a place was taken (release it with ``release_occupancy``). A tuple:
    refused with ``(close code, reason)``.
    """
    limit = max_connections if max_connections is not None else dorm_settings.MAX_CONNECTIONS_PER_ROOM
    if limit is None:
        return False
    try:
        taken = await stores().occupancy.occupy(room, connection_id, int(limit))
    except Exception as exc:
        _store_failed(exc)
        return False
    return True if taken else (CloseCode.ROOM_FULL, "room is full")


def release_occupancy(room: str, connection_id: str) -> None:
    """Give a place back (from a synchronous disconnect; runs in the background)."""

    async def release() -> None:
        try:
            await stores().occupancy.vacate(room, connection_id)
        except Exception as exc:  # the place's lease ends by itself
            _store_failed(exc)

    _keep_until_done(asyncio.get_running_loop().create_task(release()))


async def admit_message(identity: Identity, room: str) -> int | None:
    """None to admit, or the milliseconds the sender should wait."""
    rate = float(dorm_settings.MESSAGE_RATE_PER_SECOND)
    if rate <= 0:
        return None
    wait = await _take(f"msg:{room}:{identity.user_id}", rate, int(dorm_settings.MESSAGE_BURST))
    if wait > 0:
        return max(1, math.ceil(wait * 1000))
    return None
