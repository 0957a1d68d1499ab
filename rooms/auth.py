"""Who is connecting: the identity of a WebSocket connection, and its rights.

Three ways in, checked in this order:

1. ``?token=``: a room token (``rooms/tokens.py``). Its ``room`` must be the
   path's room (else 4403) and it gives the token's ``scope``. The only way
   into a private room.
2. ``?userId=`` with ``ALLOW_ANONYMOUS`` on (the local-development default):
   ``write`` scope in any public room.
3. ``?userId=`` in a public room whose settings say ``"anonymous": "read"``:
   ``read`` scope, even with ``ALLOW_ANONYMOUS`` off (public viewers of a
   board or a poll).

Anything else is refused: 4403 for a private room, 4401 (token required)
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooms import tokens
from rooms.conf import dorm_settings
from rooms.protocol import MAX_USER_ID_CHARS, CloseCode


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    scope: str  # "read", "write" or "host"
    # When the credential stops being valid (seconds since the epoch), for
    # tokens; the connection is closed with 4401 then.
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class RoomAccess:
    """What the room itself says about who may connect (rooms/access.py)."""

    private: bool = False
    max_connections: int | None = None
    # "read" lets anonymous clients in read-only; "" (default) does not.
    anonymous: str = ""
    # The room's kind ("" for a room that does not exist yet).
    kind: str = ""

    @classmethod
    def from_room(cls, private: bool, max_connections: int | None, settings: Any, kind: str = "") -> RoomAccess:
        anonymous = settings.get("anonymous", "") if isinstance(settings, dict) else ""
        return cls(
            private=private,
            max_connections=max_connections,
            anonymous="read" if anonymous == "read" else "",
            kind=kind,
        )


class Refusal(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def identify(query: dict[str, str], room: str, access: RoomAccess | None = None) -> Identity:
    access = access or RoomAccess()
    token = query.get("token")
    if token:
        try:
            claims = tokens.verify(token, room)
        except tokens.TokenError as exc:
            raise Refusal(exc.code, exc.reason) from None
        # The connection lives as long as a handshake with this token would
        # still be accepted: the same leeway as the check above.
        expires_at = claims.exp + float(dorm_settings.TOKEN_LEEWAY_SECONDS)
        return Identity(user_id=claims.sub, scope=claims.scope, expires_at=expires_at)
    if access.private:
        raise Refusal(CloseCode.FORBIDDEN, "room is private: a token is required")
    if dorm_settings.ALLOW_ANONYMOUS:
        scope = "write"
    elif access.anonymous == "read":
        scope = "read"
    else:
        raise Refusal(CloseCode.UNAUTHORIZED, "token required")
    user_id = query.get("userId", "")
    if not user_id:
        raise Refusal(CloseCode.BAD_REQUEST, "missing identity: give userId or token")
    if len(user_id) > MAX_USER_ID_CHARS or not user_id.isprintable():
        raise Refusal(CloseCode.BAD_REQUEST, f"userId must be 1-{MAX_USER_ID_CHARS} printable characters")
    return Identity(user_id=user_id, scope=scope)
