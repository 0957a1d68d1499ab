"""The demo pages' views (Django's test client; the browser tests drive them for real)."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

from rooms.models import Event, Room
from rooms.protocol import now_ms

pytestmark = pytest.mark.django_db


def test_landing_page_lists_rooms_with_kind_and_latest_seq(client: Client) -> None:
    assert "No rooms yet" in client.get("/").content.decode()
    board = Room.objects.create(slug="board-1", kind="whiteboard")
    Room.objects.create(slug="talk", kind="chat")
    for seq in (1, 2, 3):
        Event.objects.create(room=board, seq=seq, type="draw", user_id="u1", payload="{}", ts=seq)
    html = client.get("/").content.decode()
    assert 'href="/rooms/board-1/"' in html and 'href="/rooms/talk/"' in html
    row = html.split('data-room="board-1"')[1].split("</tr>")[0]
    assert "<td>whiteboard</td>" in row and "<td>3</td>" in row


def test_the_form_opens_or_creates_a_room_of_the_chosen_kind(client: Client) -> None:
    response = client.post("/", {"slug": "lobby", "kind": "chat"})
    assert response.status_code == 302 and response["Location"] == "/rooms/lobby/"
    assert Room.objects.get(slug="lobby").kind == "chat"
    # An existing room keeps its kind.
    client.post("/", {"slug": "lobby", "kind": "whiteboard"})
    assert Room.objects.get(slug="lobby").kind == "chat"


@pytest.mark.parametrize("slug,kind", [("bad slug!", "chat"), ("x" * 65, "chat"), ("ok", "nonsense")])
def test_the_form_refuses_bad_input_without_creating_anything(client: Client, slug: str, kind: str) -> None:
    response = client.post("/", {"slug": slug, "kind": kind})
    assert response.status_code == 200 and 'role="alert"' in response.content.decode()
    assert not Room.objects.exists()


def test_room_pages_by_kind(client: Client) -> None:
    Room.objects.create(slug="talk", kind="chat")
    chat = client.get("/rooms/talk/").content.decode()
    assert 'id="typing"' in chat and 'import { DormClient } from "/static/dorm/dorm.js"' in chat
    board = client.get("/rooms/new-board/")  # created on first visit, as a whiteboard
    assert board.status_code == 200 and 'id="canvas"' in board.content.decode()
    assert Room.objects.get(slug="new-board").kind == "whiteboard"
    assert client.get("/rooms/new-chat/?kind=chat").status_code == 200
    assert Room.objects.get(slug="new-chat").kind == "chat"


def test_room_pages_refuse_unknown_kinds_and_bad_ids(client: Client) -> None:
    Room.objects.create(slug="odd", kind="counter")
    assert client.get("/rooms/odd/").status_code == 404
    assert client.get("/rooms/missing/?kind=counter").status_code == 404
    assert not Room.objects.filter(slug="missing").exists()
    assert client.get("/rooms/bad%20id/").status_code == 404


def test_the_room_id_is_escaped_into_the_page(client: Client) -> None:
    Room.objects.create(slug="a-b_c", kind="chat")
    html = client.get("/rooms/a-b_c/").content.decode()
    assert '<script id="room-slug" type="application/json">"a-b_c"</script>' in html


def test_the_js_client_is_served_as_an_es_module(client: Client) -> None:
    response = client.get("/static/dorm/dorm.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    body = b"".join(response.streaming_content).decode()
    assert "export class DormClient" in body


def _auth(html: str) -> dict[str, str]:
    return json.loads(html.split('<script id="auth" type="application/json">')[1].split("</script>")[0])


def test_how_a_page_joins_anonymous_session_or_login(client: Client) -> None:
    Room.objects.create(slug="talk", kind="chat")
    with override_settings(DORM={**settings.DORM, "ALLOW_ANONYMOUS": True}):
        assert _auth(client.get("/rooms/talk/").content.decode()) == {"mode": "anonymous", "csrf": ""}
    with override_settings(DORM={**settings.DORM, "ALLOW_ANONYMOUS": False}):
        html = client.get("/rooms/talk/").content.decode()
        assert _auth(html)["mode"] == "login" and 'id="login-needed"' in html
        client.force_login(User.objects.create_user("ann", password="pw"))
        auth = _auth(client.get("/rooms/talk/").content.decode())
        assert auth["mode"] == "session" and len(auth["csrf"]) >= 32


def test_the_form_creates_a_poll_with_question_options_and_deadline(client: Client) -> None:
    before = now_ms()
    response = client.post(
        "/", {"slug": "lunch", "kind": "poll", "question": " Lunch? ", "options": "pizza, ramen,, salad ", "minutes": "5"}
    )
    assert response.status_code == 302 and response["Location"] == "/rooms/lunch/"
    room = Room.objects.get(slug="lunch")
    assert room.kind == "poll"
    assert room.settings["question"] == "Lunch?" and room.settings["options"] == ["pizza", "ramen", "salad"]
    assert before + 300_000 <= room.settings["closesAt"] <= now_ms() + 300_000
    html = client.get("/rooms/lunch/").content.decode()
    assert 'id="chart"' in html and 'id="poll-state"' in html
    # No options: the kind's default (yes/no); other kinds ignore the poll fields.
    client.post("/", {"slug": "quick", "kind": "poll", "question": "", "options": "", "minutes": ""})
    assert Room.objects.get(slug="quick").settings == {}
    client.post("/", {"slug": "talk", "kind": "chat", "options": "a, b"})
    assert Room.objects.get(slug="talk").settings == {}
    # ?kind=poll creates a missing room as a default poll.
    assert client.get("/rooms/yes-no/?kind=poll").status_code == 200
    assert Room.objects.get(slug="yes-no").kind == "poll"


@pytest.mark.parametrize(
    "fields", [{"options": "only-one"}, {"options": ",".join(f"o{i}" for i in range(33))}, {"options": "a, " + "b" * 201},
               {"minutes": "0"}, {"minutes": "soon"}]
)
def test_the_form_refuses_bad_poll_settings(client: Client, fields: dict[str, str]) -> None:
    response = client.post("/", {"slug": "p1", "kind": "poll", **fields})
    assert response.status_code == 200 and 'role="alert"' in response.content.decode()
    assert not Room.objects.exists()
