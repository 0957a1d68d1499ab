"""Token buckets in Redis (distributed mode): one Lua script, atomic per key.

The script reads the clock of the Redis server (``TIME``), not the caller's,
so processes with skewed clocks share one notion of time. A refused take
writes nothing. Keys expire once the bucket would be full again, so idle
clients cost no memory.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

log = logging.getLogger("dorm.security")

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst. Returns the wait in
# microseconds (0: admitted). Lua numbers are doubles: microseconds since the
# epoch (~1.8e15) are exact below 2^53.
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000000)
end
if tokens < 1 then
  return math.ceil((1 - tokens) * 1000000 / rate)
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return 0
"""


class RedisBuckets:
    def __init__(self, url: str, prefix: str = "dorm:limits:") -> None:
        # Short timeouts: a limit check sits in front of every frame, and a
        # slow Redis must not stall the room (limits.py fails open on error).
        self._redis = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(TAKE)
        self._prefix = prefix

    async def take(self, key: str, rate: float, burst: int) -> float:
        micros = await self._script(keys=[self._prefix + key], args=[repr(float(rate)), int(burst)])
        return int(micros) / 1_000_000

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
