"""Presence in Redis for the distributed mode: shared by every process.

Keys (``P`` = ``DORM["PRESENCE_KEY_PREFIX"]``; room ids hold no ``:`` or ``|``):

=========================  ======  ==============================================
``P room:<room>``          hash    connection id -> entry (JSON: user, process,
                                   status, meta, joined ms)
``P seen:<room>``          zset    connection id -> last seen (ms): freshness
``P ru:<room>:<user>``     zset    the user's connections in the room -> last seen
``P user:<user>``          zset    ``<room>|<connection>`` -> last seen: the index
                                   the "who of these is online" query reads
``P conns``                zset    ``<room>|<connection>`` -> last seen, every
                                   entry: the sweep reads the stale end only
=========================  ======  ==============================================

Freshness is the score, compared with Redis's own clock (``TIME`` inside the
scripts), never a process's: an entry whose process died simply stops being
refreshed and drops out of every answer after the TTL, with no process alive
to delete it. Every key also gets a ``PEXPIRE`` well past the TTL, renewed on
each write, so an abandoned room's keys disappear by themselves; the sweep
deletes stale entries of live rooms.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from presence.backends.base import DEFAULT_STATUS, JoinEffect, LeaveEffect, StaleEntry, aggregate
from rooms.conf import dorm_settings

NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "

# KEYS: room hash, seen, ru, user index, conns
# ARGV: conn, entry (if new), ttl ms, expire ms, room, member (<room>|<conn>)
JOIN = NOW + """
local fresh_after = now - tonumber(ARGV[3])
local existed = redis.call('hexists', KEYS[1], ARGV[1]) == 1
local was_fresh = false
if existed then
  local s = redis.call('zscore', KEYS[2], ARGV[1])
  was_fresh = s ~= false and tonumber(s) > fresh_after
else
  redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
end
local total = redis.call('zcard', KEYS[3])
local fresh = redis.call('zcount', KEYS[3], '(' .. fresh_after, '+inf')
local own = redis.call('zscore', KEYS[3], ARGV[1])
if own then
  total = total - 1
  if tonumber(own) > fresh_after then fresh = fresh - 1 end
end
redis.call('zadd', KEYS[2], now, ARGV[1])
redis.call('zadd', KEYS[3], now, ARGV[1])
redis.call('zadd', KEYS[4], now, ARGV[6])
redis.call('zadd', KEYS[5], now, ARGV[6])
for i = 1, 5 do redis.call('pexpire', KEYS[i], ARGV[4]) end
if fresh > 0 or was_fresh then return 0 end
if total > 0 or existed then return 2 end
return 1
"""

# KEYS: room hash, seen, ru, user index, conns; ARGV: conn, ttl ms, room, member
LEAVE = NOW + """
local raw = redis.call('hget', KEYS[1], ARGV[1])
if not raw then return false end
local fresh_after = now - tonumber(ARGV[2])
local s = redis.call('zscore', KEYS[2], ARGV[1])
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('zrem', KEYS[4], ARGV[4])
redis.call('zrem', KEYS[5], ARGV[4])
if redis.call('zcard', KEYS[3]) == 0 then return 'left' end
if s and tonumber(s) > fresh_after and redis.call('zcount', KEYS[3], '(' .. fresh_after, '+inf') == 0 then
  return 'offline'
end
return ''
"""

# KEYS: room hash, seen, ru, user index, conns; ARGV: conn, expire ms, member, [status, meta]
TOUCH = NOW + """
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[4] then
  local entry = cjson.decode(redis.call('hget', KEYS[1], ARGV[1]))
  entry['s'] = ARGV[4]
  entry['m'] = ARGV[5]
  redis.call('hset', KEYS[1], ARGV[1], cjson.encode(entry))
end
redis.call('zadd', KEYS[2], 'XX', now, ARGV[1])
redis.call('zadd', KEYS[3], 'XX', now, ARGV[1])
redis.call('zadd', KEYS[4], 'XX', now, ARGV[3])
redis.call('zadd', KEYS[5], 'XX', now, ARGV[3])
for i = 1, 5 do redis.call('pexpire', KEYS[i], ARGV[2]) end
return 1
"""

# KEYS: room hash, seen; ARGV: ttl ms -> {entries..., scores...} of fresh connections
MEMBERS = NOW + """
local fresh = redis.call('zrangebyscore', KEYS[2], '(' .. (now - tonumber(ARGV[1])), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #fresh, 2 do
  local raw = redis.call('hget', KEYS[1], fresh[i])
  if raw then
    table.insert(out, fresh[i]) table.insert(out, raw) table.insert(out, fresh[i + 1])
  end
end
return out
"""

# KEYS: seen; ARGV: ttl ms -> fresh connections of the room
COUNT = NOW + """
return redis.call('zcount', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
"""

# KEYS: user index keys; ARGV: ttl ms -> per key the fresh members
ONLINE = NOW + """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('zrangebyscore', key, '(' .. (now - tonumber(ARGV[1])), '+inf')
end
return out
"""

# KEYS: conns; ARGV: ttl ms, limit, prefix, offset -> {room, conn, entry, score, ...}
# of the stalest connections (the entry's hash key is derived from the prefix).
STALE = NOW + """
local seen = redis.call('zrangebyscore', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'WITHSCORES', 'LIMIT', tonumber(ARGV[4]), tonumber(ARGV[2]))
local out = {}
for i = 1, #seen, 2 do
  local sep = string.find(seen[i], '|', 1, true)
  local room = string.sub(seen[i], 1, sep - 1)
  local conn = string.sub(seen[i], sep + 1)
  local raw = redis.call('hget', ARGV[3] .. 'room:' .. room, conn)
  if raw then
    table.insert(out, room) table.insert(out, conn) table.insert(out, raw) table.insert(out, seen[i + 1])
  else
    redis.call('zrem', KEYS[1], seen[i])  -- its room's keys expired
  end
end
return out
"""


# Keepalive refreshes per pipelined request (``touch_many``).
TOUCH_PIPELINE_SLICE = 1000


class RedisPresence:
    def __init__(self, url: str, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else str(dorm_settings.PRESENCE_KEY_PREFIX)
        self.client = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._join = self.client.register_script(JOIN)
        self._leave = self.client.register_script(LEAVE)
        self._touch = self.client.register_script(TOUCH)
        self._members = self.client.register_script(MEMBERS)
        self._online = self.client.register_script(ONLINE)
        self._count = self.client.register_script(COUNT)
        self._stale = self.client.register_script(STALE)

    # -- keys -------------------------------------------------------------------

    def _keys(self, room: str, user_id: str) -> list[str]:
        p = self.prefix
        return [f"{p}room:{room}", f"{p}seen:{room}", f"{p}ru:{room}:{user_id}", f"{p}user:{user_id}", f"{p}conns"]

    @staticmethod
    def _ttl_ms() -> int:
        return int(dorm_settings.PRESENCE_TTL_SECONDS * 1000)

    def _expire_ms(self) -> int:
        # Long past the TTL: a silent socket's entry must outlive the TTL so a
        # late heartbeat can revive it; an abandoned room's keys still go.
        return max(self._ttl_ms() * 10, 600_000)

    # -- writes -------------------------------------------------------------------

    async def join(self, room: str, connection_id: str, user_id: str, process: str) -> JoinEffect:
        entry = orjson.dumps({"u": user_id, "p": process, "s": DEFAULT_STATUS, "m": "", "j": 0}).decode()
        result = await self._join(
            keys=self._keys(room, user_id),
            args=[connection_id, entry, self._ttl_ms(), self._expire_ms(), room, f"{room}|{connection_id}"],
        )
        return {0: None, 1: "joined", 2: "online"}[int(result)]  # type: ignore[return-value]

    async def leave(self, room: str, connection_id: str, user_id: str) -> tuple[str, LeaveEffect] | None:
        result = await self._leave(
            keys=self._keys(room, user_id), args=[connection_id, self._ttl_ms(), room, f"{room}|{connection_id}"]
        )
        if result is None:
            return None
        effect = result.decode() if isinstance(result, bytes) else str(result)
        return user_id, (effect or None)  # type: ignore[return-value]

    async def set_status(self, room: str, connection_id: str, user_id: str, status: str, meta: Any) -> bool:
        meta_text = "" if meta is None else orjson.dumps(meta).decode()
        keys = self._keys(room, user_id)
        args = [connection_id, self._expire_ms(), f"{room}|{connection_id}", status, meta_text]
        return bool(await self._touch(keys=keys, args=args))

    async def touch(self, room: str, connection_id: str, user_id: str) -> bool:
        keys = self._keys(room, user_id)
        return bool(await self._touch(keys=keys, args=[connection_id, self._expire_ms(), f"{room}|{connection_id}"]))

    async def touch_many(self, entries: list[tuple[str, str, str]]) -> None:
        # One pipelined round trip (not a transaction: each touch is its own
        # script, atomic by itself), in slices so one batch never builds an
        # unbounded request.
        expire_ms = self._expire_ms()
        for start in range(0, len(entries), TOUCH_PIPELINE_SLICE):
            pipe = self.client.pipeline(transaction=False)
            for room, connection_id, user_id in entries[start : start + TOUCH_PIPELINE_SLICE]:
                args = [connection_id, expire_ms, f"{room}|{connection_id}"]
                await self._touch(keys=self._keys(room, user_id), args=args, client=pipe)
            await pipe.execute()

    async def forget(self, room: str, connection_id: str, user_id: str) -> None:
        await self.leave(room, connection_id, user_id)

    # -- reads ------------------------------------------------------------------------

    async def members(self, room: str) -> list[dict[str, Any]]:
        raw = await self._members(keys=self._keys(room, "")[:2], args=[self._ttl_ms()])
        entries = []
        for i in range(0, len(raw), 3):
            entry = orjson.loads(raw[i + 1])
            meta = orjson.loads(entry["m"]) if entry.get("m") else None
            entries.append((raw[i].decode(), entry["u"], entry["s"], meta, float(raw[i + 2])))
        return aggregate(entries)

    async def is_online(self, room: str, user_id: str) -> bool:
        ttl = self._ttl_ms()
        keys = self._keys(room, user_id)
        # One key: the user's connections in this room, by last seen.
        fresh = await self._online(keys=[keys[2]], args=[ttl])
        return bool(fresh and fresh[0])

    async def count(self, room: str) -> int:
        return int(await self._count(keys=[f"{self.prefix}seen:{room}"], args=[self._ttl_ms()]))

    async def online(self, user_ids: list[str]) -> dict[str, list[str]]:
        if not user_ids:
            return {}
        fresh = await self._online(keys=[f"{self.prefix}user:{u}" for u in user_ids], args=[self._ttl_ms()])
        found: dict[str, list[str]] = {}
        for user_id, members in zip(user_ids, fresh):
            rooms = sorted({m.decode().split("|", 1)[0] for m in members})
            if rooms:
                found[user_id] = rooms
        return found

    async def stale(self, limit: int = 1000, offset: int = 0) -> list[StaleEntry]:
        raw = await self._stale(keys=[f"{self.prefix}conns"], args=[self._ttl_ms(), limit, self.prefix, offset])
        found = []
        for i in range(0, len(raw), 4):
            entry = orjson.loads(raw[i + 2])
            found.append(StaleEntry(raw[i].decode(), raw[i + 1].decode(), entry["u"], entry["p"], int(float(raw[i + 3]))))
        found.sort(key=lambda s: s.last_seen_ms)
        return found

    # -- processes ----------------------------------------------------------------------

    async def beat(self, process: str, ttl_ms: int) -> None:
        await self.client.set(f"{self.prefix}proc:{process}", b"1", px=ttl_ms)

    async def alive(self, processes: list[str]) -> set[str]:
        if not processes:
            return set()
        values = await self.client.mget([f"{self.prefix}proc:{p}" for p in processes])
        return {p for p, v in zip(processes, values) if v is not None}

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:
            pass
