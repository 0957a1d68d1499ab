"""A room's own key-value storage, Durable Objects style.

Reads go to a per-actor cache, then the database. Writes are staged and
committed in the same transaction as the next group commit of durable
events, so what a handler wrote and what it broadcast become durable together
(the output gate covers storage too).
"""

from __future__ import annotations

from typing import Any

import orjson
from channels.db import database_sync_to_async

from rooms.runtime import persistence

_MISSING = object()


class RoomStorage:
    def __init__(self, room_id: int) -> None:
        self._room_id = room_id
        self._cache: dict[str, Any] = {}
        self._staged: dict[str, str | None] = {}
        # Database rows read since the actor last asked (billing).
        self.rows_read = 0

    async def get(self, key: str, default: Any = None) -> Any:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            text = await database_sync_to_async(persistence.stored_value)(self._room_id, key)
            self.rows_read += 1
            value = None if text is None else orjson.loads(text)
            self._cache[key] = value
        return default if value is None else value

    async def list(self, prefix: str = "") -> dict[str, Any]:
        rows = await database_sync_to_async(persistence.stored_values)(self._room_id, prefix)
        self.rows_read += len(rows)
        found = {key: orjson.loads(text) for key, text in rows}
        for key, text in self._staged.items():
            if key.startswith(prefix):
                if text is None:
                    found.pop(key, None)
                else:
                    found[key] = orjson.loads(text)
        return dict(sorted(found.items()))

    def put(self, key: str, value: Any) -> None:
        text = orjson.dumps(value).decode()
        self._cache[key] = orjson.loads(text)  # a copy: later mutation of `value` is not stored
        self._staged[key] = text

    def delete(self, key: str) -> None:
        self._cache[key] = None
        self._staged[key] = None

    def take_rows_read(self) -> int:
        rows, self.rows_read = self.rows_read, 0
        return rows

    def has_writes(self) -> bool:
        return bool(self._staged)

    def take_writes(self) -> dict[str, str | None]:
        staged, self._staged = self._staged, {}
        return staged

    def forget(self) -> None:
        """After a failed commit: staged writes are gone, the cache may lie."""
        self._staged = {}
        self._cache.clear()
