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

import base64
import functools
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from rooms.conf import dorm_settings
from rooms.protocol import MAX_USER_ID_CHARS, ROOM_ID_RE, CloseCode

SCOPES = ("read", "write", "host")
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
# A token longer than this is refused before any parsing or crypto: real
# tokens are ~300 bytes, and the query string is attacker-controlled.
MAX_TOKEN_CHARS = 4096
REQUIRED_CLAIMS = ["sub", "room", "scope", "exp", "iat", "jti"]
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
    leeway = float(dorm_settings.TOKEN_LEEWAY_SECONDS)
    data = _hmac_claims(token, algorithm, key, leeway) if algorithm in HMAC_ALGORITHMS else None
    try:
        if data is None:
            data = jwt.decode(token, key, algorithms=[algorithm], leeway=leeway, options={"require": REQUIRED_CLAIMS})
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


# -- the common case without PyJWT ---------------------------------------------------
#
# PyJWT's decode of an HS256 token took ~35 us of the ~0.5 ms a new
# connection costs (docs/performance.md): most of it generic work (a
# per-character alphabet check, key-format checks on every call, json,
# datetime). ``_hmac_claims`` accepts only tokens PyJWT would accept with the
# same claims, and only in the plain shape Dorm's own ``issue`` (and any
# ordinary JWT library) makes: anything else, every refusal included, goes
# to PyJWT, which decides and words the error. tests/unit/test_tokens.py
# checks the one direction that matters against PyJWT itself: whatever this
# accepts, PyJWT accepts with the same claims.

_HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_STRING_CLAIMS = ("sub", "room", "scope", "jti")


@functools.lru_cache(maxsize=8)
def _hmac_key(algorithm: str, secret: str) -> bytes | None:
    """The secret's bytes as PyJWT's HMAC uses them, or None where PyJWT
    would refuse the key (PEM, SSH or DER-looking) or warn that it is short."""
    alg = jwt.get_algorithm_by_name(algorithm)
    try:
        key = alg.prepare_key(secret)
    except jwt.InvalidKeyError:
        return None
    return None if alg.check_key_length(key) else key


def _segment(segment: str) -> bytes | None:
    """A base64url segment's bytes, only for the canonical unpadded encoding
    (PyJWT refuses non-alphabet characters and non-canonical encodings)."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=") != segment.encode():
        return None
    return data


def _hmac_claims(token: str, algorithm: str, secret: str, leeway: float) -> dict[str, Any] | None:
    """The claims of a valid token, checked without PyJWT; None: let PyJWT decide."""
    key = _hmac_key(algorithm, secret)
    parts = token.split(".")
    if key is None or len(parts) != 3:
        return None
    header_segment, payload_segment, signature_segment = parts
    header_bytes, payload_bytes, signature = _segment(header_segment), _segment(payload_segment), _segment(signature_segment)
    if header_bytes is None or payload_bytes is None or signature is None:
        return None
    try:
        header, payload = orjson.loads(header_bytes), orjson.loads(payload_bytes)
    except orjson.JSONDecodeError:
        return None  # including what only Python's json reads (NaN, huge integers, lone surrogates)
    # Only "alg" and "typ" (PyJWT checks "kid", "crit" and "b64": left to it).
    if type(header) is not dict or header.get("alg") != algorithm or not header.keys() <= {"alg", "typ"}:
        return None
    if "typ" in header and type(header["typ"]) is not str:
        return None
    expected = hmac.new(key, f"{header_segment}.{payload_segment}".encode(), _HMAC_HASHES[algorithm]).digest()
    if not hmac.compare_digest(expected, signature):
        return None
    if type(payload) is not dict or "aud" in payload:  # PyJWT refuses an audience nobody asked for
        return None
    # Scalars only: no nesting for Python's json to hit its recursion limit on.
    if any(type(v) in (dict, list) for v in payload.values()):
        return None
    if any(type(payload.get(claim)) is not str for claim in _STRING_CLAIMS):
        return None
    exp, iat, nbf = payload.get("exp"), payload.get("iat"), payload.get("nbf", 0)
    if type(exp) is not int or type(iat) is not int or type(nbf) is not int:
        return None
    now = time.time()
    if exp <= now - leeway or iat > now + leeway or nbf > now + leeway:
        return None  # PyJWT words it: expired, or not yet valid
    return payload


def _valid_user_id(user_id: str) -> bool:
    return 0 < len(user_id) <= MAX_USER_ID_CHARS and user_id.isprintable()
