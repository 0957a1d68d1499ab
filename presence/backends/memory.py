"""In-process presence for the embedded mode."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

DEFAULT_STATUS = "online"


@dataclass(slots=True)
class _Entry:
    user_id: str
    status: str
    last_seen: float


class MemoryPresence:
    def __init__(self) -> None:
        # room -> connection id -> entry
        self._rooms: dict[str, dict[str, _Entry]] = {}

    def join(self, room: str, connection_id: str, user_id: str) -> bool:
        conns = self._rooms.setdefault(room, {})
        first = all(e.user_id != user_id for e in conns.values())
        conns[connection_id] = _Entry(user_id, DEFAULT_STATUS, time.monotonic())
        return first

    def leave(self, room: str, connection_id: str) -> str | None:
        conns = self._rooms.get(room)
        if not conns or connection_id not in conns:
            return None
        user_id = conns.pop(connection_id).user_id
        if not conns:
            del self._rooms[room]
            return user_id
        return None if any(e.user_id == user_id for e in conns.values()) else user_id

    def set_status(self, room: str, connection_id: str, status: str) -> None:
        entry = self._rooms.get(room, {}).get(connection_id)
        if entry is not None:
            entry.status = status
            entry.last_seen = time.monotonic()

    def touch(self, room: str, connection_id: str) -> None:
        entry = self._rooms.get(room, {}).get(connection_id)
        if entry is not None:
            entry.last_seen = time.monotonic()

    def members(self, room: str) -> list[dict[str, Any]]:
        users: dict[str, dict[str, Any]] = {}
        for entry in self._rooms.get(room, {}).values():
            user = users.get(entry.user_id)
            if user is None:
                users[entry.user_id] = {"userId": entry.user_id, "status": entry.status, "connections": 1}
            else:
                user["connections"] += 1
        return list(users.values())
