"""Room tokens: short-lived JWTs that say who may do what in which room.

Claims (PROTOCOL.md section 6): ``sub`` (the user id), ``room`` (the slug),
``scope`` (``read`` < ``write`` < ``host``), ``exp``, ``iat``, ``jti``.

HS256 with ``DORM["TOKEN_SECRET"]`` is the default: Dorm issues and checks its
own tokens. With RS256/ES256 Dorm needs only the public key
(``TOKEN_PUBLIC_KEY``): the app's backend signs tokens with its private key
and Dorm can verify but never mint them (unless ``TOKEN_PRIVATE_KEY`` is set
too). The algorithm list given to PyJWT is exactly the configured one, so a
token cannot pick its own algorithm (``none``, or HS256 signed with the
public key as the secret).

Nothing here logs: a token is a bearer credential and never goes to a log.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from rooms.conf import dorm_settings
from rooms.protocol import MAX_USER_ID_CHARS, ROOM_ID_RE, CloseCode

SCOPES = ("read", "write", "host")
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
# A token longer than this is refused before any parsing or crypto: real
# tokens are ~300 bytes, and the query string is attacker-controlled.
MAX_TOKEN_CHARS = 4096
# RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
MIN_HMAC_SECRET_BYTES = 32


class TokenError(Exception):
    """The token is refused; ``code`` is the close code (4401 or 4403)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TokensNotConfigured(TokenError):
    def __init__(self, reason: str) -> None:
        super().__init__(CloseCode.UNAUTHORIZED, reason)


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    room: str
    scope: str
    exp: int  # seconds since the epoch
    iat: int
    jti: str


def _algorithm() -> str:
    algorithm = str(dorm_settings.TOKEN_ALGORITHM)
    if algorithm not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
        raise TokensNotConfigured(f"unsupported token algorithm {algorithm}")
    return algorithm


def _verification_key(algorithm: str) -> str:
    if algorithm in HMAC_ALGORITHMS:
        secret = str(dorm_settings.TOKEN_SECRET or "")
        if len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
            raise TokensNotConfigured("token authentication is not configured on this server")
        return secret
    key = str(dorm_settings.TOKEN_PUBLIC_KEY or "")
    if not key:
        raise TokensNotConfigured("token authentication is not configured on this server")
    return key


def _signing_key(algorithm: str) -> str:
    if algorithm in HMAC_ALGORITHMS:
        return _verification_key(algorithm)
    key = str(dorm_settings.TOKEN_PRIVATE_KEY or "")
    if not key:
        raise TokensNotConfigured("this server verifies tokens but does not issue them (no private key)")
    return key


def can_issue() -> bool:
    try:
        _signing_key(_algorithm())
    except TokensNotConfigured:
        return False
    return True


def issue(
    user_id: str,
    room: str,
    scope: str,
    *,
    ttl_seconds: float | None = None,
    now: float | None = None,
) -> tuple[str, Claims]:
    """A signed token and its claims. ``now``/``ttl_seconds`` exist for tests and tools."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    if not ROOM_ID_RE.fullmatch(room):
        raise ValueError("room must be a room id")
    if not _valid_user_id(user_id):
        raise ValueError(f"user id must be 1-{MAX_USER_ID_CHARS} printable characters")
    algorithm = _algorithm()
    issued = int(time.time() if now is None else now)
    ttl = dorm_settings.TOKEN_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    claims = Claims(
        sub=user_id, room=room, scope=scope, exp=issued + int(ttl), iat=issued, jti=secrets.token_urlsafe(12)
    )
    body: dict[str, Any] = {
        "sub": claims.sub,
        "room": claims.room,
        "scope": claims.scope,
        "exp": claims.exp,
        "iat": claims.iat,
        "jti": claims.jti,
    }
    return jwt.encode(body, _signing_key(algorithm), algorithm=algorithm), claims


def verify(token: str, room: str) -> Claims:
    """The claims of a token valid for ``room``, or :class:`TokenError`.

    4401: missing, malformed, badly signed, expired or not yet valid (the
    client should fetch a new token). 4403: valid but for another room (a new
    token would not help unless the app grants this room).
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(CloseCode.UNAUTHORIZED, "invalid token")
    algorithm = _algorithm()
    key = _verification_key(algorithm)
    try:
        data = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            leeway=float(dorm_settings.TOKEN_LEEWAY_SECONDS),
            options={"require": ["sub", "room", "scope", "exp", "iat", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(CloseCode.UNAUTHORIZED, "token expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError(CloseCode.UNAUTHORIZED, "token not yet valid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(CloseCode.UNAUTHORIZED, f"invalid token: missing claim {exc.claim}") from None
    except jwt.InvalidSignatureError:
        raise TokenError(CloseCode.UNAUTHORIZED, "invalid token signature") from None
    except jwt.InvalidTokenError:
        # Never the library's message: some quote parts of the token.
        raise TokenError(CloseCode.UNAUTHORIZED, "invalid token") from None
    sub, token_room, scope, jti = data["sub"], data["room"], data["scope"], data["jti"]
    if not isinstance(sub, str) or not _valid_user_id(sub):
        raise TokenError(CloseCode.UNAUTHORIZED, "invalid token: bad sub")
    if scope not in SCOPES:
        raise TokenError(CloseCode.UNAUTHORIZED, "invalid token: bad scope")
    if not isinstance(jti, str) or not isinstance(token_room, str):
        raise TokenError(CloseCode.UNAUTHORIZED, "invalid token")
    if token_room != room:
        raise TokenError(CloseCode.FORBIDDEN, "token is for another room")
    return Claims(sub=sub, room=token_room, scope=scope, exp=int(data["exp"]), iat=int(data["iat"]), jti=jti)


def _valid_user_id(user_id: str) -> bool:
    return 0 < len(user_id) <= MAX_USER_ID_CHARS and user_id.isprintable()
