"""The questions presence answers, for the REST API, the admin and tests.

- who is in a room now: the live backend (``members``);
- who was in a room at time T: the ledger (sessions open at T);
- sessions of a user across rooms: the ledger;
- which of these users are online in any room: the backend's per-user index
  (one Redis round trip for the whole list), never a question to every room.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from presence.models import PresenceSession


def sessions(
    *, room: str | None = None, user_id: str | None = None, at: datetime | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> QuerySet[PresenceSession]:
    """Ledger sessions, newest first. ``at``: those open at that instant."""
    qs = PresenceSession.objects.all()
    if room:
        qs = qs.filter(room=room)
    if user_id:
        qs = qs.filter(user_id=user_id)
    if at is not None:
        qs = qs.filter(joined_at__lte=at).filter(Q(left_at__isnull=True) | Q(left_at__gt=at))
    if since is not None:
        qs = qs.filter(Q(left_at__isnull=True) | Q(left_at__gte=since))
    if until is not None:
        qs = qs.filter(joined_at__lt=until)
    return qs.order_by("-joined_at", "-id")


def who_was_there(room: str, at: datetime) -> list[str]:
    """User ids with a session open in the room at ``at``, sorted."""
    return sorted(set(sessions(room=room, at=at).values_list("user_id", flat=True)))


def session_json(s: PresenceSession) -> dict[str, Any]:
    return {
        "room": s.room,
        "userId": s.user_id,
        "connectionId": s.connection_id,
        "joinedAt": _ms(s.joined_at),
        "leftAt": _ms(s.left_at),
        "closeCode": s.close_code,
        "closeReason": s.close_reason,
        "userAgent": s.user_agent,
        "addressHash": s.address_hash,
        "process": s.process,
    }


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)
