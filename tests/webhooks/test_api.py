"""Registering webhook endpoints over REST."""

from __future__ import annotations

from typing import Any

import pytest

from rooms.models import Room
from tests.fixtures.api import token_client
from webhooks.models import Endpoint

pytestmark = pytest.mark.django_db


def test_register_for_a_room_or_for_all_rooms(owner: Any) -> None:
    Room.objects.create(slug="mine", owner=owner)
    api = token_client(owner)
    one = api.post("/api/webhooks/", {"url": "https://example.com/h", "events": ["user.left", "user.joined", "user.left"], "room": "mine"}, content_type="application/json")
    assert one.status_code == 201, one.content
    body = one.json()
    assert body["room"] == "mine" and body["events"] == ["user.joined", "user.left"] and body["secret"].startswith("whsec_")
    every = api.post("/api/webhooks/", {"url": "https://example.com/all", "events": ["event.durable"]}, content_type="application/json")
    assert every.status_code == 201 and every.json()["room"] is None
    assert [e["url"] for e in api.get("/api/webhooks/").json()] == ["https://example.com/h", "https://example.com/all"]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://example.com/h", "events": []},
        {"url": "https://example.com/h", "events": ["room.exploded"]},
        {"url": "not a url", "events": ["user.joined"]},
        {"url": "https://example.com/h", "events": ["user.joined"], "room": "theirs"},
        {"url": "https://example.com/h", "events": ["user.joined"], "room": "nope"},
    ],
)
def test_bad_registrations_are_400(owner: Any, other: Any, body: dict[str, Any]) -> None:
    Room.objects.create(slug="theirs", owner=other)
    response = token_client(owner).post("/api/webhooks/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert not Endpoint.objects.exists()


def test_plain_http_is_refused_outside_debug(owner: Any, settings: Any) -> None:
    settings.DEBUG = False
    response = token_client(owner).post("/api/webhooks/", {"url": "http://example.com/h", "events": ["user.joined"]}, content_type="application/json")
    assert response.status_code == 400 and "https" in str(response.json())


def test_others_endpoints_are_invisible_staff_see_all(owner: Any, other: Any, staff: Any) -> None:
    endpoint = Endpoint.objects.create(owner=other, url="https://example.com/x", events=["user.joined"])
    assert token_client(owner).get("/api/webhooks/").json() == []
    assert token_client(owner).delete(f"/api/webhooks/{endpoint.pk}/").status_code == 404
    assert len(token_client(staff).get("/api/webhooks/").json()) == 1
    assert token_client(other).patch(f"/api/webhooks/{endpoint.pk}/", {"active": False}, content_type="application/json").json()["active"] is False
    assert token_client(other).delete(f"/api/webhooks/{endpoint.pk}/").status_code == 204
