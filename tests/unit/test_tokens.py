"""Room tokens: signature, expiry, room, scope; at the handshake and mid-session."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from channels.db import database_sync_to_async
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.test import override_settings
from hypothesis import given, settings as hypothesis_settings
from hypothesis import strategies as st

from rooms import tokens
from rooms.models import Event, Room

pytestmark = pytest.mark.django_db(transaction=True)


def dorm(**overrides: Any) -> Any:
    return override_settings(DORM={**settings.DORM, **overrides})


@database_sync_to_async
def stored(room: str) -> list[tuple[int, str, str]]:
    return list(Event.objects.filter(room__slug=room).order_by("seq").values_list("seq", "type", "user_id"))


def forged(claims: dict[str, Any], key: str = "x" * 40, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def hs256_with_empty_key(claims: dict[str, Any]) -> str:
    # PyJWT refuses to sign with an empty key; an attacker would not.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(b"", signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def good_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "u1", "room": "r", "scope": "write", "exp": now + 60, "iat": now, "jti": "j1"}
    claims.update(overrides)
    return claims


# -- verify() -------------------------------------------------------------------


def test_issue_then_verify_gives_the_claims() -> None:
    token, claims = tokens.issue("u1", "board-1", "read")
    verified = tokens.verify(token, "board-1")
    assert verified == claims
    assert verified.exp - verified.iat == 15 * 60 and verified.jti


@pytest.mark.parametrize(
    ("token_of", "code", "reason"),
    [
        (lambda: tokens.issue("u1", "a", "write")[0], 4403, "token is for another room"),
        (lambda: tokens.issue("u1", "b", "write", now=time.time() - 3600)[0], 4401, "token expired"),
        (lambda: forged(good_claims(room="b"), key="another-secret-of-enough-length-000000"), 4401, "invalid token signature"),
        (lambda: forged({k: v for k, v in good_claims(room="b").items() if k != "jti"}, key=settings.DORM["TOKEN_SECRET"]), 4401, "invalid token: missing claim jti"),
        (lambda: forged(good_claims(room="b", scope="admin"), key=settings.DORM["TOKEN_SECRET"]), 4401, "invalid token: bad scope"),
        (lambda: forged(good_claims(room="b", iat=int(time.time()) + 3600), key=settings.DORM["TOKEN_SECRET"]), 4401, "token not yet valid"),
        (lambda: jwt.encode(good_claims(room="b"), None, algorithm="none"), 4401, "invalid token"),
        (lambda: "not.a.jwt", 4401, "invalid token"),
        (lambda: "x" * 5000, 4401, "invalid token"),
    ],
)
def test_refused_tokens(token_of: Any, code: int, reason: str) -> None:
    with pytest.raises(tokens.TokenError) as refused:
        tokens.verify(token_of(), "b")
    assert (refused.value.code, refused.value.reason) == (code, reason)


# -- the HMAC fast path against PyJWT -----------------------------------------------------

SECRET = "s" * 64  # long enough for HS512 (PyJWT warns about shorter HMAC keys)


def raw_token(header: Any, claims: Any, key: str = SECRET, algorithm: str = "HS256", mangle: str = "none") -> str:
    """A token built by hand (any header, any claims, any JSON), signed with ``key``."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def text(value: Any) -> bytes:
        return value if isinstance(value, bytes) else json.dumps(value).encode()

    signing_input = b64(text(header)) + "." + b64(text(claims))
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[algorithm]
    signature = b64(hmac.new(key.encode(), signing_input.encode(), digest).digest())
    if mangle == "pad":
        signature += "=" * (-len(signature) % 4 or 4)
    elif mangle == "noncanonical":  # the last character's unused bits set
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        signature = signature[:-1] + alphabet[alphabet.index(signature[-1]) | 1]
    elif mangle == "flip":
        signature = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    elif mangle == "extra":
        signature += ".x"
    elif mangle == "junk":
        signature = signature[:5] + "!" + signature[5:]
    return signing_input + "." + signature


SCALARS = st.one_of(st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.floats(allow_nan=True),
                    st.text(max_size=8), st.just([1]), st.just({"a": {"b": 1}}))
NOW = int(time.time())
TIMES = st.one_of(st.sampled_from([NOW - 3600, NOW - 15, NOW + 15, NOW + 3600, NOW + 10**9]), SCALARS)


@st.composite
def tokens_to_check(draw: Any) -> tuple[str, str]:
    algorithm = draw(st.sampled_from(["HS256", "HS256", "HS384", "HS512"]))
    header: dict[str, Any] = {"alg": draw(st.sampled_from([algorithm, algorithm, "HS256", "none", "RS256", ""]))}
    for extra in draw(st.lists(st.sampled_from(["typ", "kid", "crit", "b64", "x"]), unique=True, max_size=2)):
        header[extra] = draw(st.sampled_from(["JWT", 7, None, ["b64"], False]))
    claims: dict[str, Any] = {"sub": "u1", "room": "r", "scope": "write", "exp": NOW + 60, "iat": NOW, "jti": "j"}
    for name in draw(st.lists(st.sampled_from(["sub", "room", "scope", "exp", "iat", "jti", "nbf", "aud", "iss"]),
                              unique=True, max_size=3)):
        if draw(st.booleans()):
            claims.pop(name, None)
        else:
            claims[name] = draw(TIMES if name in ("exp", "iat", "nbf") else SCALARS)
    body: Any = claims
    shape = draw(st.sampled_from(["object", "object", "object", "array", "nan", "deep", "bigint"]))
    if shape == "array":
        body = [claims]
    elif shape == "nan":
        body = json.dumps(claims).replace('"jti": "j"', '"jti": NaN').encode()
    elif shape == "deep":
        body = json.dumps({**claims, "x": 0}).replace('"x": 0', '"x": ' + "[" * 990 + "]" * 990).encode()
    elif shape == "bigint":
        body = json.dumps({**claims, "x": 2**80}).encode()
    key = draw(st.sampled_from([SECRET, SECRET, "t" * 40]))
    mangle = draw(st.sampled_from(["none", "none", "none", "pad", "noncanonical", "flip", "extra", "junk"]))
    return raw_token(header, body, key, algorithm, mangle), algorithm


@given(tokens_to_check())
@hypothesis_settings(max_examples=1500, deadline=None)
def test_the_hmac_fast_path_accepts_only_what_pyjwt_accepts_with_the_same_claims(case: tuple[str, str]) -> None:
    token, algorithm = case
    fast = tokens._hmac_claims(token, algorithm, SECRET, 10.0)
    if fast is None:
        return  # PyJWT decides, as before
    slow = jwt.decode(token, SECRET, algorithms=[algorithm], leeway=10.0, options={"require": tokens.REQUIRED_CLAIMS})
    assert fast == slow


def test_what_issue_mints_takes_the_fast_path() -> None:
    token, claims = tokens.issue("u1", "board-1", "write")
    fast = tokens._hmac_claims(token, "HS256", settings.DORM["TOKEN_SECRET"], 10.0)
    assert fast is not None and fast["sub"] == "u1" and fast["jti"] == claims.jti
    for algorithm in ("HS384", "HS512"):
        fast = tokens._hmac_claims(raw_token({"alg": algorithm, "typ": "JWT"}, good_claims(), algorithm=algorithm),
                                   algorithm, SECRET, 10.0)
        assert fast is not None and fast["room"] == "r"


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (raw_token({"alg": "HS256"}, good_claims(), key="t" * 40), "another key"),
        (raw_token({"alg": "HS256"}, good_claims(), mangle="noncanonical"), "non-canonical base64"),
        (raw_token({"alg": "HS256"}, good_claims(), mangle="pad"), "padded"),
        (raw_token({"alg": "HS384"}, good_claims(), algorithm="HS384"), "another algorithm than configured"),
        (raw_token({"alg": "HS256", "kid": "k"}, good_claims()), "a header PyJWT checks"),
        (raw_token({"alg": "HS256"}, good_claims(exp=NOW - 15)), "expired past the leeway"),
        (raw_token({"alg": "HS256"}, good_claims(iat=NOW + 3600)), "issued in the future"),
        (raw_token({"alg": "HS256"}, good_claims(nbf=NOW + 3600)), "not before"),
        (raw_token({"alg": "HS256"}, good_claims(aud="x")), "an audience"),
        (raw_token({"alg": "HS256"}, good_claims(exp=float(NOW + 60))), "a float exp (PyJWT's int() takes it)"),
        (raw_token({"alg": "HS256"}, good_claims(extra={"nested": 1})), "a nested claim"),
    ],
)
def test_the_fast_path_leaves_the_unusual_to_pyjwt(token: str, why: str) -> None:
    assert tokens._hmac_claims(token, "HS256", SECRET, 10.0) is None, why


def test_the_fast_path_is_off_for_a_key_pyjwt_would_refuse_or_warn_about() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\n" + "A" * 64 + "\n-----END PUBLIC KEY-----"
    assert tokens._hmac_key("HS256", pem) is None
    assert tokens._hmac_key("HS256", "short") is None
    assert tokens._hmac_key("HS256", SECRET) == SECRET.encode()


def test_refusals_keep_pyjwts_words_with_the_fast_path() -> None:
    """Whatever the fast path declines, verify() answers as PyJWT made it answer."""
    secret = settings.DORM["TOKEN_SECRET"]
    cases = {
        "invalid token signature": forged(good_claims(room="b"), key="t" * 40),
        "token expired": forged(good_claims(room="b", exp=NOW - 3600, iat=NOW - 7200), key=secret),
        "token not yet valid": forged(good_claims(room="b", nbf=NOW + 3600), key=secret),
        "invalid token": raw_token({"alg": "HS256"}, good_claims(room="b"), key=secret, mangle="noncanonical"),
    }
    for reason, token in cases.items():
        with pytest.raises(tokens.TokenError) as refused:
            tokens.verify(token, "b")
        assert refused.value.reason == reason


def test_leeway_tolerates_small_clock_skew_only() -> None:
    token, _ = tokens.issue("u1", "r", "read", ttl_seconds=60, now=time.time() - 65)
    assert tokens.verify(token, "r").sub == "u1"  # 5 s late, leeway 10 s
    token, _ = tokens.issue("u1", "r", "read", ttl_seconds=60, now=time.time() - 75)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(token, "r")


def test_no_secret_means_no_tokens_at_all() -> None:
    token, _ = tokens.issue("u1", "r", "write")
    with dorm(TOKEN_SECRET=""):
        assert not tokens.can_issue()
        with pytest.raises(tokens.TokenError, match="not configured"):
            tokens.verify(token, "r")
        # A token signed with the empty secret (what a naive server would check) is not accepted.
        with pytest.raises(tokens.TokenError):
            tokens.verify(hs256_with_empty_key(good_claims()), "r")


def test_es256_verify_only_with_a_public_key_and_no_algorithm_confusion() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with dorm(TOKEN_ALGORITHM="ES256", TOKEN_PUBLIC_KEY=public_pem, TOKEN_SECRET=""):
        assert not tokens.can_issue()  # verify-only: the app's backend signs
        app_token = jwt.encode(good_claims(), private_pem, algorithm="ES256")
        assert tokens.verify(app_token, "r").sub == "u1"
        # HS256 "signed" with the public key as the secret: the classic confusion attack.
        with pytest.raises(tokens.TokenError):
            tokens.verify(jwt.encode(good_claims(), "x" * 40, algorithm="HS256"), "r")
        other = ec.generate_private_key(ec.SECP256R1())
        with pytest.raises(tokens.TokenError, match="signature"):
            tokens.verify(jwt.encode(good_claims(), other, algorithm="ES256"), "r")
    with dorm(TOKEN_ALGORITHM="ES256", TOKEN_PUBLIC_KEY=public_pem, TOKEN_PRIVATE_KEY=private_pem):
        token, _ = tokens.issue("u2", "r", "host")
        assert tokens.verify(token, "r").scope == "host"


# -- the WebSocket handshake ----------------------------------------------------


async def test_a_token_for_room_a_on_room_b_closes_4403(connect: Any) -> None:
    token, _ = tokens.issue("u1", "room-a", "write")
    client = await connect("room-b", token=token, expect_welcome=False)
    assert await client.closed_with() == (4403, "token is for another room")


async def test_an_expired_token_closes_4401(connect: Any) -> None:
    token, _ = tokens.issue("u1", "exp", "write", now=time.time() - 3600)
    client = await connect("exp", token=token, expect_welcome=False)
    assert await client.closed_with() == (4401, "token expired")


async def test_a_wrong_signature_closes_4401(connect: Any) -> None:
    token = forged(good_claims(room="sig"), key="not-the-server-secret-but-long-enough")
    client = await connect("sig", token=token, expect_welcome=False)
    assert await client.closed_with() == (4401, "invalid token signature")


async def test_a_valid_token_gives_its_sub_and_wins_over_userid(connect: Any) -> None:
    token, _ = tokens.issue("alice", "ok", "write")
    client = await connect("ok", token=token, userId="mallory")
    assert client.welcome["userId"] == "alice"


@dorm(TOKEN_LEEWAY_SECONDS=0)
async def test_a_token_expiring_mid_session_closes_4401_at_expiry(connect: Any) -> None:
    token, claims = tokens.issue("u1", "mid", "write", ttl_seconds=2)
    client = await connect("mid", token=token)
    await client.send("draw", {"x": 1}, id="before")
    assert (await client.recv_type("ack"))["seq"] == 1
    code, reason = await client.closed_with(timeout=4)
    closed_at = time.time()
    assert (code, reason) == (4401, "token expired")
    assert claims.exp - 0.05 <= closed_at <= claims.exp + 0.5


async def test_read_scope_sending_draw_is_forbidden_and_nothing_is_stored(connect: Any) -> None:
    viewer_token, _ = tokens.issue("viewer", "ro", "read")
    viewer = await connect("ro", token=viewer_token)
    writer = await connect("ro", userId="w")
    await viewer.send("draw", {"x": 1}, id="d1")
    assert await viewer.recv_type("error") == {"type": "error", "reason": "forbidden", "id": "d1"}
    await viewer.send("cursor", {"x": 1}, id="c1")
    assert (await viewer.recv_type("error"))["reason"] == "forbidden"
    # Presence is allowed to read-only members; the connection stays usable.
    await viewer.send("presence", {"status": "away"}, id="p1")
    assert await viewer.recv_type("ack") == {"type": "ack", "id": "p1"}
    assert (await writer.recv_type("presence"))["userId"] == "viewer"
    assert await writer.nothing()  # neither draw nor cursor reached anyone
    assert await stored("ro") == []


async def test_host_only_clear_is_refused_to_write_scope_and_allowed_to_host(connect: Any) -> None:
    writer_token, _ = tokens.issue("w", "hosted", "write")
    host_token, _ = tokens.issue("h", "hosted", "host")
    writer = await connect("hosted", token=writer_token)
    host = await connect("hosted", token=host_token)
    await writer.send("draw", {"x": 1}, id="d1")
    await writer.recv_type("ack")
    await writer.send("clear", id="c1")
    assert await writer.recv_type("error") == {"type": "error", "reason": "forbidden", "id": "c1"}
    await host.send("clear", id="c2")
    assert (await host.recv_type("ack"))["seq"] == 2
    assert (await writer.recv_type("clear"))["userId"] == "h"
    assert await stored("hosted") == [(1, "draw", "w"), (2, "clear", "h")]
    late = await connect("hosted", userId="late")
    assert late.welcome["state"] == {"strokes": []}


# -- anonymous access and private rooms -------------------------------------------


@dorm(ALLOW_ANONYMOUS=False)
async def test_without_anonymous_access_a_userid_alone_closes_4401(connect: Any) -> None:
    client = await connect("anon-off", userId="u1", expect_welcome=False)
    assert await client.closed_with() == (4401, "token required")


@dorm(ALLOW_ANONYMOUS=False)
async def test_a_public_room_may_admit_anonymous_viewers_read_only(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="show", settings={"anonymous": "read"})
    viewer = await connect("show", userId="v1")
    await viewer.send("draw", {"x": 1}, id="d1")
    assert (await viewer.recv_type("error"))["reason"] == "forbidden"
    token, _ = tokens.issue("presenter", "show", "write")
    presenter = await connect("show", token=token)
    await presenter.send("draw", {"x": 2}, id="d2")
    assert (await presenter.recv_type("ack"))["seq"] == 1
    assert (await viewer.recv_type("draw"))["payload"] == {"x": 2}


async def test_a_private_room_admits_token_holders_only(connect: Any) -> None:
    # Even with anonymous access on (the development default) and even if the
    # room's settings ask for anonymous viewers.
    await database_sync_to_async(Room.objects.create)(slug="secret", private=True, settings={"anonymous": "read"})
    anonymous = await connect("secret", userId="u1", expect_welcome=False)
    assert await anonymous.closed_with() == (4403, "room is private: a token is required")
    token, _ = tokens.issue("member", "secret", "write")
    member = await connect("secret", token=token)
    assert member.welcome["userId"] == "member"
    assert (await database_sync_to_async(Room.objects.get)(slug="secret")).private
