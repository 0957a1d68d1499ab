"""The room actor's own view of who is here, for ``welcome``.

Every change of a room's membership passes through its actor (joins, leaves,
``presence`` status frames, the ``$offline``/``$online`` signals, a dead
process's leaves), so the actor can keep the list itself instead of asking
the backend on every join: with Redis that read is one round trip and a
parse of the whole room per join, the difference between ~180 and thousands
of joins per second in a 200-member room (bench/presence_churn.py). The
backend stays the authority for the effects (who joined, who left) and for
everyone else (REST, other processes); the roster is loaded from it when the
actor wakes, so a room that moved starts from what Redis knows.
"""

from __future__ import annotations

import itertools
from typing import Any

from presence.backends.base import DEFAULT_STATUS, PresenceBackend

_order = itertools.count()


class Roster:
    def __init__(self) -> None:
        # user -> connection -> [status, fresh, last change (for "latest status")]
        self._users: dict[str, dict[str, list[Any]]] = {}
        self.loaded = False

    async def load(self, backend: PresenceBackend, room: str) -> None:
        self._users.clear()
        for member in await backend.members(room):
            conns = self._users.setdefault(member["userId"], {})
            for c in member["connections"]:
                conns[c["connectionId"]] = [c["status"], True, next(_order)]
        self.loaded = True

    def join(self, user_id: str, connection_id: str) -> None:
        conns = self._users.setdefault(user_id, {})
        entry = conns.get(connection_id)
        if entry is None:
            conns[connection_id] = [DEFAULT_STATUS, True, next(_order)]
        else:
            entry[1] = True

    def leave(self, user_id: str, connection_id: str) -> None:
        conns = self._users.get(user_id)
        if conns is not None:
            conns.pop(connection_id, None)
            if not conns:
                del self._users[user_id]

    def status(self, user_id: str, connection_id: str, status: str) -> None:
        entry = self._users.get(user_id, {}).get(connection_id)
        if entry is not None:
            entry[0], entry[1], entry[2] = status, True, next(_order)

    def silent(self, user_id: str, connection_id: str) -> None:
        entry = self._users.get(user_id, {}).get(connection_id)
        if entry is not None:
            entry[1] = False

    def empty(self) -> bool:
        """No connection at all, fresh or silent (the room's last socket closed)."""
        return not self._users

    def welcome(self) -> list[dict[str, Any]]:
        """``[{"userId", "status", "connections"}]`` of users with a fresh connection."""
        out = []
        for user_id, conns in self._users.items():
            fresh = [e for e in conns.values() if e[1]]
            if fresh:
                latest = max(fresh, key=lambda e: e[2])
                out.append({"userId": user_id, "status": latest[0], "connections": len(fresh)})
        return out
