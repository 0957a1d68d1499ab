"""The live-presence interface: who is in a room now, per user and connection.

Live presence lives outside the room's actor so that it survives the actor's
hibernation (connections stay open while the actor sleeps) and, in the
distributed mode, the room moving to another process. The embedded mode keeps
it in process memory (``memory.py``); the distributed mode in Redis
(``redis.py``), behind this same protocol.

Writers: the room's actor (join, leave, status: one writer per room, so the
"first connection of this user" answer is never raced) and the process that
holds the socket (``touch``, on heartbeats and other frames).

Freshness: every connection has a last-seen time. One not seen for the
presence TTL is *stale*: left out of ``members`` and ``online`` whatever
else happens, so an entry of a process that died stops counting by itself,
with no process alive to clean it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

DEFAULT_STATUS = "online"
OFFLINE = "offline"

# What a join did to the user's presence in the room.
JoinEffect = Literal["joined", "online"] | None
# What a leave did: the user's last socket closed, or their last fresh one.
LeaveEffect = Literal["left", "offline"] | None


@dataclass(slots=True)
class StaleEntry:
    """A connection entry not refreshed within the TTL (for the sweep)."""

    room: str
    connection_id: str
    user_id: str
    process: str
    last_seen_ms: int


class PresenceBackend(Protocol):
    async def join(self, room: str, connection_id: str, user_id: str, process: str) -> JoinEffect:
        """Add (or refresh) a connection. ``joined``: the user's first socket in
        the room; ``online``: the user had only stale sockets; else None."""

    async def leave(self, room: str, connection_id: str, user_id: str) -> tuple[str, LeaveEffect] | None:
        """Remove a connection: ``(user_id, effect)``, None if it was unknown."""

    async def set_status(self, room: str, connection_id: str, user_id: str, status: str, meta: Any) -> bool:
        """Record a connection's status and small metadata; False if unknown."""

    async def touch(self, room: str, connection_id: str, user_id: str) -> bool:
        """Refresh last-seen (heartbeat); False if the entry is unknown."""

    async def touch_many(self, entries: list[tuple[str, str, str]]) -> None:
        """``touch`` each ``(room, connection_id, user_id)``, in one round trip
        where the backend has them."""

    async def is_online(self, room: str, user_id: str) -> bool:
        """Whether the user has a fresh connection in the room."""

    async def members(self, room: str) -> list[dict[str, Any]]:
        """Fresh users of the room:
        ``[{"userId", "status", "meta", "lastSeen", "connections": [{"connectionId", "status", "lastSeen"}]}]``."""

    async def count(self, room: str) -> int:
        """Fresh connections in the room (the REST API's live connection count)."""

    async def online(self, user_ids: list[str]) -> dict[str, list[str]]:
        """Of these users, those with a fresh connection anywhere: user -> rooms."""

    async def stale(self, limit: int = 1000, offset: int = 0) -> list[StaleEntry]:
        """Entries not refreshed within the TTL (oldest first, a page), for the sweep."""

    async def forget(self, room: str, connection_id: str, user_id: str) -> None:
        """Drop an entry without any effect (the sweep, for a dead process's entries)."""

    async def beat(self, process: str, ttl_ms: int) -> None:
        """Say this process is alive for ``ttl_ms`` (its entries are not orphans)."""

    async def alive(self, processes: list[str]) -> set[str]:
        """Which of these processes beat within their TTL."""

    async def close(self) -> None:
        """Release connections (Redis)."""


def aggregate(entries: list[tuple[str, str, str, Any, float]]) -> list[dict[str, Any]]:
    """Per user from ``(connection_id, user_id, status, meta, last_seen_ms)``, in order.

    A user's status and metadata are those of the connection that set them
    most recently (the freshest): the device the user is on now.
    """
    users: dict[str, dict[str, Any]] = {}
    for conn_id, user_id, status, meta, seen in entries:
        user = users.get(user_id)
        seen_ms = int(seen)
        if user is None:
            user = users[user_id] = {"userId": user_id, "status": status, "meta": meta, "lastSeen": seen_ms, "connections": []}
        elif seen_ms >= user["lastSeen"]:
            user["status"], user["meta"], user["lastSeen"] = status, meta, seen_ms
        user["connections"].append({"connectionId": conn_id, "status": status, "lastSeen": seen_ms})
    return list(users.values())
