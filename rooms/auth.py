"""Who is connecting: the identity of a WebSocket connection.

Anonymous access (``?userId=``) is the local-development default. Tokens
(``?token=``, PROTOCOL.md section 6) are verified here once the security
issue lands; until then a token is refused with 4401 rather than trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

from rooms.conf import dorm_settings
from rooms.protocol import MAX_USER_ID_CHARS, CloseCode


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    scope: str  # "read", "write" or "host"


class Refusal(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def identify(query: dict[str, str], room: str) -> Identity:
    if query.get("token"):
        raise Refusal(CloseCode.UNAUTHORIZED, "token authentication is not enabled on this server")
    if not dorm_settings.ALLOW_ANONYMOUS:
        raise Refusal(CloseCode.UNAUTHORIZED, "token required")
    user_id = query.get("userId", "")
    if not user_id:
        raise Refusal(CloseCode.BAD_REQUEST, "missing identity: give userId or token")
    if len(user_id) > MAX_USER_ID_CHARS or not user_id.isprintable():
        raise Refusal(CloseCode.BAD_REQUEST, f"userId must be 1-{MAX_USER_ID_CHARS} printable characters")
    return Identity(user_id=user_id, scope="write")
