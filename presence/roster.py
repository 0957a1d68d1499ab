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

import orjson

from presence.backends.base import DEFAULT_STATUS, PresenceBackend

_order = itertools.count()


class Roster:
    def __init__(self) -> None:
        # user -> connection -> [status, fresh, last change (for "latest status")]
        self._users: dict[str, dict[str, list[Any]]] = {}
        # user -> that user's welcome entry as JSON, for users with a fresh
        # connection: rebuilt for the one user a change touches, so a welcome
        # joins ready text instead of walking every member in Python (in a
        # join storm into rooms of 100, building the list was ~7 % of each
        # connection's CPU, and grew with the room).
        self._entries: dict[str, str] = {}
        # Every connection, fresh or silent: each receives the room's frames.
        self._connections = 0
        self.loaded = False

    async def load(self, backend: PresenceBackend, room: str) -> None:
        self._users.clear()
        for member in await backend.members(room):
            conns = self._users.setdefault(member["userId"], {})
            for c in member["connections"]:
                conns[c["connectionId"]] = [c["status"], True, next(_order)]
        self._connections = sum(len(conns) for conns in self._users.values())
        self._entries.clear()
        for user_id in self._users:
            self._refresh(user_id)
        self.loaded = True

    def join(self, user_id: str, connection_id: str) -> None:
        conns = self._users.setdefault(user_id, {})
        entry = conns.get(connection_id)
        if entry is None:
            conns[connection_id] = [DEFAULT_STATUS, True, next(_order)]
            self._connections += 1
        else:
            entry[1] = True
        self._refresh(user_id)

    def leave(self, user_id: str, connection_id: str) -> None:
        conns = self._users.get(user_id)
        if conns is not None:
            if conns.pop(connection_id, None) is not None:
                self._connections -= 1
            if not conns:
                del self._users[user_id]
            self._refresh(user_id)

    def status(self, user_id: str, connection_id: str, status: str) -> None:
        entry = self._users.get(user_id, {}).get(connection_id)
        if entry is not None:
            entry[0], entry[1], entry[2] = status, True, next(_order)
            self._refresh(user_id)

    def silent(self, user_id: str, connection_id: str) -> None:
        entry = self._users.get(user_id, {}).get(connection_id)
        if entry is not None:
            entry[1] = False
            self._refresh(user_id)

    def empty(self) -> bool:
        """No connection at all, fresh or silent (the room's last socket closed)."""
        return not self._users

    def _refresh(self, user_id: str) -> None:
        summary = self._summary(user_id)
        if summary is None:
            self._entries.pop(user_id, None)
        else:
            # As text: orjson's bytes keep their 4 KiB output buffer (a
            # held bytes entry made every idle connection 4 KiB bigger).
            self._entries[user_id] = orjson.dumps(summary).decode()

    def _summary(self, user_id: str) -> dict[str, Any] | None:
        fresh = [e for e in self._users.get(user_id, {}).values() if e[1]]
        if not fresh:
            return None
        latest = max(fresh, key=lambda e: e[2])
        return {"userId": user_id, "status": latest[0], "connections": len(fresh)}

    def welcome_json(self) -> orjson.Fragment:
        """``welcome()`` as ready JSON, to embed in the welcome frame."""
        return orjson.Fragment("[" + ",".join(self._entries.values()) + "]")

    def welcome(self) -> list[dict[str, Any]]:
        """``[{"userId", "status", "connections"}]`` of users with a fresh connection."""
        return [orjson.loads(entry) for entry in self._entries.values()]

    def connections(self) -> int:
        """How many connections the room has, fresh or silent (who a broadcast reaches)."""
        return self._connections

    def fresh_users(self) -> int:
        """How many users have a fresh connection (the welcome's length)."""
        return len(self._entries)

    def status_of(self, user_id: str) -> str:
        """The user's latest status among their fresh connections."""
        summary = self._summary(user_id)
        return DEFAULT_STATUS if summary is None else summary["status"]
