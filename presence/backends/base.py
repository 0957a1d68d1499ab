"""The live-presence interface: who is in a room now, per user and connection.

Live presence lives outside the room's actor so that it survives the actor's
hibernation: connections stay open while the actor sleeps. The embedded mode
keeps it in process memory (``memory.py``); the distributed mode will keep it
in Redis beside it, behind this same protocol.
"""

from __future__ import annotations

from typing import Any, Protocol


class PresenceBackend(Protocol):
    def join(self, room: str, connection_id: str, user_id: str) -> bool:
        """Add a connection; True when it is the user's first in the room."""

    def leave(self, room: str, connection_id: str) -> str | None:
        """Remove a connection; the user id when it was the user's last, else None."""

    def set_status(self, room: str, connection_id: str, status: str) -> None:
        """Record a connection's status (``online``, ``typing``, app-defined)."""

    def touch(self, room: str, connection_id: str) -> None:
        """A heartbeat: refresh the connection's last-seen time."""

    def members(self, room: str) -> list[dict[str, Any]]:
        """Users present now: ``[{"userId", "status", "connections"}]``."""
