"""Rooms: create, list, detail; authentication and who sees what."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from rooms.models import Event, Room
from tests.fixtures.api import token_client

pytestmark = pytest.mark.django_db


def test_anonymous_requests_get_401_json(client: Client) -> None:
    response = client.get("/api/rooms/")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "detail" in response.json()
    assert response["WWW-Authenticate"].startswith("Token")


def test_a_bad_token_is_401(db: Any) -> None:
    response = Client(headers={"Authorization": "Token nope"}).get("/api/rooms/")
    assert response.status_code == 401


def test_create_then_detail_with_token(owner: Any) -> None:
    api = token_client(owner)
    response = api.post(
        "/api/rooms/",
        {"slug": "board-1", "kind": "chat", "private": True, "max_connections": 10, "settings": {"a": 1}},
        content_type="application/json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["slug"] == "board-1" and body["kind"] == "chat" and body["private"] is True
    assert body["max_connections"] == 10 and body["latest_seq"] == 0 and body["connections"] == 0
    room = Room.objects.get(slug="board-1")
    assert room.owner == owner and room.settings == {"a": 1}
    assert api.get("/api/rooms/board-1/").json()["slug"] == "board-1"


def test_create_without_trailing_slash_and_default_kind(owner: Any) -> None:
    response = token_client(owner).post("/api/rooms", {"slug": "r"}, content_type="application/json")
    assert response.status_code == 201
    assert response.json()["kind"] == "whiteboard"


def test_session_authentication_works(owner: Any) -> None:
    session = Client(enforce_csrf_checks=True)
    session.force_login(owner)
    assert session.get("/api/rooms/").status_code == 200
    # A session write without the CSRF token is refused, as for any Django form.
    assert session.post("/api/rooms/", {"slug": "x"}, content_type="application/json").status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {"slug": "bad slug"},
        {"slug": "x" * 65},
        {"slug": ""},
        {"slug": "ok", "kind": "nope"},
        {"slug": "ok", "max_connections": 0},
        {"slug": "ok", "max_connections": 10**20},
        {"slug": "ok", "settings": [1]},
        {"slug": "ok", "settings": {"k": "\u0000"}},
        {"slug": "ok", "private": "maybe"},
        {},
    ],
)
def test_bad_room_bodies_are_400(owner: Any, body: dict[str, Any]) -> None:
    response = token_client(owner).post("/api/rooms/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert isinstance(response.json(), dict)
    assert not Room.objects.exists()


@pytest.mark.parametrize("raw", ["{", "[]", "null", '"x"', "\xff"])
def test_malformed_json_is_400(owner: Any, raw: str) -> None:
    response = token_client(owner).post("/api/rooms/", raw, content_type="application/json")
    assert response.status_code == 400


def test_duplicate_slug_is_409(owner: Any, other: Any) -> None:
    Room.objects.create(slug="taken")
    response = token_client(other).post("/api/rooms/", {"slug": "taken"}, content_type="application/json")
    assert response.status_code == 409
    assert response.json() == {"detail": "a room with this slug exists"}


def test_owners_list_their_rooms_staff_list_all(owner: Any, other: Any, staff: Any) -> None:
    Room.objects.create(slug="mine", owner=owner)
    Room.objects.create(slug="theirs", owner=other)
    Room.objects.create(slug="auto")  # created by a WebSocket connect
    slugs = lambda user: [r["slug"] for r in token_client(user).get("/api/rooms/").json()["results"]]  # noqa: E731
    assert slugs(owner) == ["mine"]
    assert slugs(other) == ["theirs"]
    assert slugs(staff) == ["auto", "mine", "theirs"]


def test_private_rooms_of_others_are_404_public_ones_readable(owner: Any, other: Any, staff: Any) -> None:
    Room.objects.create(slug="secret", owner=owner, private=True)
    Room.objects.create(slug="open", owner=owner)
    assert token_client(other).get("/api/rooms/secret/").status_code == 404
    assert token_client(other).get("/api/rooms/secret/history").status_code == 404
    assert token_client(other).get("/api/rooms/open/").status_code == 200
    assert token_client(staff).get("/api/rooms/secret/").status_code == 200
    assert token_client(owner).get("/api/rooms/nope/").json() == {"detail": "No Room matches the given query."}


def test_room_shows_latest_seq(owner: Any) -> None:
    room = Room.objects.create(slug="r", owner=owner)
    Event.objects.bulk_create(Event(room=room, seq=s, type="draw", user_id="u", payload="{}", ts=0) for s in (1, 2, 3))
    assert token_client(owner).get("/api/rooms/r/").json()["latest_seq"] == 3
    assert token_client(owner).get("/api/rooms/").json()["results"][0]["latest_seq"] == 3


def test_room_list_pages_with_a_limit(owner: Any) -> None:
    for i in range(5):
        Room.objects.create(slug=f"r{i}", owner=owner)
    api = token_client(owner)
    first = api.get("/api/rooms/?limit=2").json()
    assert [r["slug"] for r in first["results"]] == ["r0", "r1"]
    second = api.get(first["next"]).json()
    assert [r["slug"] for r in second["results"]] == ["r2", "r3"]
    assert api.get("/api/rooms/?cursor=garbage").status_code == 404


def test_a_huge_body_is_413_not_parsed(owner: Any) -> None:
    body = '{"slug": "big", "settings": {"k": "' + "x" * (2 * 1024 * 1024) + '"}}'
    response = token_client(owner).post("/api/rooms/", body, content_type="application/json")
    assert response.status_code == 413
    assert "detail" in response.json()
    assert not Room.objects.exists()


def test_a_room_of_a_kind_this_server_lacks_is_409_not_500(owner: Any) -> None:
    Room.objects.create(slug="old", owner=owner, kind="retired")
    response = token_client(owner).get("/api/rooms/old/state")
    assert response.status_code == 409
    assert "retired" in response.json()["detail"]
