"""POST /api/rooms/<slug>/token: who gets which token."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from rooms import tokens
from rooms.models import Room

pytestmark = pytest.mark.django_db


def dorm(**overrides: Any) -> Any:
    return override_settings(DORM={**settings.DORM, **overrides})


@pytest.fixture
def user() -> User:
    return User.objects.create_user("ann", password="pw")


@pytest.fixture
def backend() -> APIClient:
    """An app backend: a staff service account with a DRF token."""
    service = User.objects.create_user("app-backend", is_staff=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=service).key}")
    return client


def test_a_session_user_gets_a_write_token_for_themselves(user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/admin/login/")  # a page that sets the CSRF cookie, as a browser app would
    csrf = client.cookies[settings.CSRF_COOKIE_NAME].value
    response = client.post("/api/rooms/board-1/token", {}, content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 200, response.content
    body = response.json()
    claims = tokens.verify(body["token"], "board-1")
    assert (claims.sub, claims.room, claims.scope) == (str(user.pk), "board-1", "write")
    assert body["expiresAt"] == claims.exp * 1000
    assert body["wsUrl"] == f"ws://testserver/ws/board-1?token={body['token']}"


def test_session_posts_need_the_csrf_token(user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/api/rooms/board-1/token", {}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


def test_anonymous_requests_are_refused() -> None:
    response = APIClient().post("/api/rooms/board-1/token", {}, format="json")
    assert response.status_code in (401, 403)
    assert "token" not in response.json()


def test_plain_users_get_no_host_no_private_room_no_other_user(user: User) -> None:
    Room.objects.create(slug="vip", private=True)
    client = APIClient()
    client.force_authenticate(user)
    assert client.post("/api/rooms/r/token", {"scope": "host"}, format="json").status_code == 403
    assert client.post("/api/rooms/vip/token", {}, format="json").status_code == 403
    assert client.post("/api/rooms/r/token", {"userId": "someone-else"}, format="json").status_code == 403
    assert client.post("/api/rooms/r/token", {"scope": "read"}, format="json").json()["scope"] == "read"


def test_an_app_backend_with_a_drf_token_mints_for_its_users(backend: APIClient) -> None:
    Room.objects.create(slug="vip", private=True)
    response = backend.post("/api/rooms/vip/token", {"userId": "player-7", "scope": "host"}, format="json")
    assert response.status_code == 200, response.content
    claims = tokens.verify(response.json()["token"], "vip")
    assert (claims.sub, claims.scope) == ("player-7", "host")


@pytest.mark.parametrize(
    ("body", "field"),
    [({"scope": "admin"}, "scope"), ({"userId": ""}, "userId"), ({"userId": "x" * 129}, "userId"), ({"userId": "a\nb"}, "userId")],
)
def test_bad_input_gets_a_400_naming_the_field(backend: APIClient, body: dict[str, Any], field: str) -> None:
    response = backend.post("/api/rooms/r/token", body, format="json")
    assert response.status_code == 400 and field in response.json()


def test_bad_slugs_and_unknown_rooms(backend: APIClient) -> None:
    assert backend.post("/api/rooms/bad.slug/token", {}, format="json").status_code == 404
    with dorm(AUTO_CREATE_ROOMS=False):
        response = backend.post("/api/rooms/nowhere/token", {}, format="json")
        assert response.status_code == 404 and response.json() == {"detail": "room does not exist"}
    assert not Room.objects.filter(slug="nowhere").exists()  # issuing a token creates nothing


def test_a_verify_only_server_says_it_does_not_issue(backend: APIClient) -> None:
    with dorm(TOKEN_SECRET=""):
        response = backend.post("/api/rooms/r/token", {}, format="json")
    assert response.status_code == 503 and "does not issue" in response.json()["detail"]


def test_token_requests_are_throttled_per_user(user: User) -> None:
    from django.core.cache import cache

    cache.clear()
    client = APIClient()
    client.force_authenticate(user)
    statuses = [client.post("/api/rooms/r/token", {}, format="json").status_code for _ in range(121)]
    assert statuses[:120] == [200] * 120 and statuses[120] == 429
    cache.clear()
