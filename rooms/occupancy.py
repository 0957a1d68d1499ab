"""Who holds a place in a size-limited room: the count behind 4409.

Only rooms with a size limit are counted (no limit, no bookkeeping). The
embedded mode counts in process memory. In the distributed mode a room's
connections spread over several processes, so the places are a Redis sorted
set per room: member = connection id, score = when its lease ends. Each
process renews the leases of its own connections; the places of a process
that died free themselves when their leases end, so a crash never leaves a
room "full" for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import redis.asyncio as aioredis

log = logging.getLogger("dorm.security")

# How long a place outlives its process's last renewal. Renewed every third
# of it, so two missed renewals in a row still keep the place.
LEASE_SECONDS = 60.0

# KEYS[1]: the room's set. ARGV: connection id, limit, lease ms.
# Returns 1 when the place is taken, 0 when the room is full.
OCCUPY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# KEYS[1]: the room's set. ARGV: lease ms, then connection ids to renew.
RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 0
"""


class Occupancy(Protocol):
    async def occupy(self, room: str, connection_id: str, limit: int) -> bool:
        """Take a place in the room; False when it already holds ``limit``."""

    async def vacate(self, room: str, connection_id: str) -> None: ...

    async def close(self) -> None: ...


class MemoryOccupancy:
    def __init__(self) -> None:
        self._rooms: dict[str, set[str]] = {}

    async def occupy(self, room: str, connection_id: str, limit: int) -> bool:
        places = self._rooms.setdefault(room, set())
        if connection_id not in places and len(places) >= limit:
            return False
        places.add(connection_id)
        return True

    async def vacate(self, room: str, connection_id: str) -> None:
        places = self._rooms.get(room)
        if places is not None:
            places.discard(connection_id)
            if not places:
                del self._rooms[room]

    async def close(self) -> None:
        return None


class RedisOccupancy:
    def __init__(self, url: str, prefix: str = "dorm:limits:", lease_seconds: float = LEASE_SECONDS) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._occupy = self._redis.register_script(OCCUPY)
        self._renew = self._redis.register_script(RENEW)
        self._prefix = prefix
        self._lease_ms = int(lease_seconds * 1000)
        # This process's places, by room key: what the renewal task renews.
        self._mine: dict[str, set[str]] = {}
        self._renewer: asyncio.Task[None] | None = None

    def _key(self, room: str) -> str:
        return f"{self._prefix}room:{room}"

    async def occupy(self, room: str, connection_id: str, limit: int) -> bool:
        key = self._key(room)
        taken = bool(await self._occupy(keys=[key], args=[connection_id, int(limit), self._lease_ms]))
        if taken:
            self._mine.setdefault(key, set()).add(connection_id)
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.get_running_loop().create_task(self._renew_forever(), name="dorm:occupancy")
        return taken

    async def vacate(self, room: str, connection_id: str) -> None:
        key = self._key(room)
        places = self._mine.get(key)
        if places is not None:
            places.discard(connection_id)
            if not places:
                del self._mine[key]
        await self._redis.zrem(key, connection_id)

    async def renew(self) -> None:
        for key, places in list(self._mine.items()):
            if places:
                await self._renew(keys=[key], args=[self._lease_ms, *places])

    async def _renew_forever(self) -> None:
        while self._mine:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self.renew()
            except Exception as exc:  # the next round retries; the lease covers two misses
                log.warning("occupancy renewal failed error=%s", type(exc).__name__)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        # Bounded: closing must not hang a shutdown on a Redis that stopped
        # answering (the sockets have 0.5 s timeouts; the pool's lock not).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._redis.aclose(), 2.0)
