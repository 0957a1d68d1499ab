"""In-process presence for the embedded mode (one process, nothing shared)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from presence.backends.base import DEFAULT_STATUS, JoinEffect, LeaveEffect, StaleEntry, aggregate
from rooms.conf import dorm_settings


def _now_ms() -> float:
    return time.time() * 1000


@dataclass(slots=True)
class _Entry:
    user_id: str
    process: str
    status: str
    meta: Any
    last_seen: float  # ms since the epoch (wall clock: the REST API shows it)


class MemoryPresence:
    def __init__(self) -> None:
        # room -> connection id -> entry (insertion order = join order)
        self._rooms: dict[str, dict[str, _Entry]] = {}
        # The online index: user -> room -> connection ids. By room, not a
        # flat set of (room, connection): one user id in many rooms (a bot,
        # a shared anonymous id) made every lookup scan all of them, and the
        # presence sweep of 10,000 rooms quadratic.
        self._users: dict[str, dict[str, set[str]]] = {}

    @staticmethod
    def _fresh_after() -> float:
        return _now_ms() - dorm_settings.PRESENCE_TTL_SECONDS * 1000

    def _user_conns(self, room: str, user_id: str) -> list[_Entry]:
        conns = self._rooms.get(room, {})
        ids = self._users.get(user_id, {}).get(room, ())
        return [conns[c] for c in ids if c in conns]

    async def join(self, room: str, connection_id: str, user_id: str, process: str) -> JoinEffect:
        fresh_after = self._fresh_after()
        others = [e for e in self._user_conns(room, user_id) if e is not self._rooms.get(room, {}).get(connection_id)]
        conns = self._rooms.setdefault(room, {})
        entry = conns.get(connection_id)
        if entry is None:
            conns[connection_id] = _Entry(user_id, process, DEFAULT_STATUS, None, _now_ms())
            self._users.setdefault(user_id, {}).setdefault(room, set()).add(connection_id)
            was_fresh = False
        else:
            was_fresh = entry.last_seen > fresh_after
            entry.last_seen = _now_ms()
        if any(e.last_seen > fresh_after for e in others) or was_fresh:
            return None
        return "online" if others or entry is not None else "joined"

    async def leave(self, room: str, connection_id: str, user_id: str = "") -> tuple[str, LeaveEffect] | None:
        conns = self._rooms.get(room)
        entry = conns.pop(connection_id, None) if conns else None
        if entry is None:
            return None
        if not conns:
            del self._rooms[room]
        rooms = self._users.get(entry.user_id)
        ids = rooms.get(room) if rooms is not None else None
        if ids is not None:
            ids.discard(connection_id)
            if not ids:
                del rooms[room]  # type: ignore[union-attr]
                if not rooms:
                    del self._users[entry.user_id]
        rest = self._user_conns(room, entry.user_id)
        if not rest:
            return entry.user_id, "left"
        fresh_after = self._fresh_after()
        if entry.last_seen > fresh_after and not any(e.last_seen > fresh_after for e in rest):
            return entry.user_id, "offline"
        return entry.user_id, None

    async def set_status(self, room: str, connection_id: str, user_id: str, status: str, meta: Any) -> bool:
        entry = self._rooms.get(room, {}).get(connection_id)
        if entry is None:
            return False
        entry.status = status
        entry.meta = meta
        entry.last_seen = _now_ms()
        return True

    async def touch(self, room: str, connection_id: str, user_id: str = "") -> bool:
        return self._touch(room, connection_id, _now_ms())

    async def touch_many(self, entries: list[tuple[str, str, str]]) -> None:
        # One clock read and no coroutine per entry: a window holds every
        # socket that kept alive in it.
        now = _now_ms()
        for room, connection_id, _ in entries:
            self._touch(room, connection_id, now)

    def _touch(self, room: str, connection_id: str, now: float) -> bool:
        entry = self._rooms.get(room, {}).get(connection_id)
        if entry is None:
            return False
        entry.last_seen = now
        return True

    async def is_online(self, room: str, user_id: str) -> bool:
        fresh_after = self._fresh_after()
        return any(e.last_seen > fresh_after for e in self._user_conns(room, user_id))

    async def members(self, room: str) -> list[dict[str, Any]]:
        fresh_after = self._fresh_after()
        return aggregate(
            [
                (conn_id, e.user_id, e.status, e.meta, e.last_seen)
                for conn_id, e in self._rooms.get(room, {}).items()
                if e.last_seen > fresh_after
            ]
        )

    async def count(self, room: str) -> int:
        fresh_after = self._fresh_after()
        return sum(1 for e in self._rooms.get(room, {}).values() if e.last_seen > fresh_after)

    async def online(self, user_ids: list[str]) -> dict[str, list[str]]:
        fresh_after = self._fresh_after()
        found: dict[str, list[str]] = {}
        for user_id in user_ids:
            rooms = sorted(
                r
                for r, ids in self._users.get(user_id, {}).items()
                if any((e := self._rooms.get(r, {}).get(c)) is not None and e.last_seen > fresh_after for c in ids)
            )
            if rooms:
                found[user_id] = rooms
        return found

    async def stale(self, limit: int = 1000, offset: int = 0) -> list[StaleEntry]:
        fresh_after = self._fresh_after()
        found = [
            StaleEntry(room, conn_id, e.user_id, e.process, int(e.last_seen))
            for room, conns in self._rooms.items()
            for conn_id, e in conns.items()
            if e.last_seen <= fresh_after
        ]
        found.sort(key=lambda s: s.last_seen_ms)
        return found[offset : offset + limit]

    async def forget(self, room: str, connection_id: str, user_id: str = "") -> None:
        await self.leave(room, connection_id)

    async def close(self) -> None:
        return None

    # Every entry here belongs to this process, which is alive by definition.
    async def beat(self, process: str, ttl_ms: int) -> None:
        return None

    async def alive(self, processes: list[str]) -> set[str]:
        return set(processes)
