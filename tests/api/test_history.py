"""History: cursor pagination by seq, filters, tombstones, bad input, index use."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from rooms.api import history
from rooms.api.history import Query
from rooms.models import Event, Room
from tests.fixtures.api import token_client

pytestmark = pytest.mark.django_db


def fill(room: Room, n: int, *, start: int = 1) -> None:
    Event.objects.bulk_create(
        Event(
            room=room,
            seq=s,
            type="draw" if s % 3 else "cursorish",
            user_id=f"u{s % 2}",
            payload=orjson.dumps({"x": s}).decode(),
            ts=1000 + s,
        )
        for s in range(start, start + n)
    )


@pytest.fixture
def room(owner: Any) -> Room:
    return Room.objects.create(slug="h", owner=owner)


def get(user: Any, query: str) -> Any:
    return token_client(user).get(f"/api/rooms/h/history{query}")


def test_since_pages_forward_and_next_walks_the_whole_log(owner: Any, room: Room) -> None:
    fill(room, 25)
    seen: list[int] = []
    url: str | None = "/api/rooms/h/history?limit=10"
    api = token_client(owner)
    pages = 0
    while url:
        body = api.get(url).json()
        seen += [e["seq"] for e in body["results"]]
        url = body["next"]
        pages += 1
    assert seen == list(range(1, 26)) and pages == 3
    first = api.get("/api/rooms/h/history?since=0&limit=1").json()["results"][0]
    assert first == {
        "seq": 1, "type": "draw", "userId": "u1", "payload": {"x": 1}, "ts": 1001, "tombstoned": False, "erasedBy": None,
    }


def test_default_limit_is_100_and_since_is_exclusive(owner: Any, room: Room) -> None:
    fill(room, 150)
    body = get(owner, "").json()
    assert [e["seq"] for e in body["results"]] == list(range(1, 101))
    assert body["next"].endswith("since=100")
    assert [e["seq"] for e in get(owner, "?since=148").json()["results"]] == [149, 150]
    assert get(owner, "?since=148").json()["next"] is None


def test_before_pages_backward_newest_first(owner: Any, room: Room) -> None:
    fill(room, 12)
    body = get(owner, "?before=11&limit=4").json()
    assert [e["seq"] for e in body["results"]] == [10, 9, 8, 7]
    assert "before=7" in body["next"]
    last = get(owner, "?before=5&limit=4").json()
    assert [e["seq"] for e in last["results"]] == [4, 3, 2, 1] and last["next"] is None


def test_filters_by_type_and_user(owner: Any, room: Room) -> None:
    fill(room, 12)
    assert [e["seq"] for e in get(owner, "?type=cursorish").json()["results"]] == [3, 6, 9, 12]
    assert [e["seq"] for e in get(owner, "?user=u0&type=draw").json()["results"]] == [2, 4, 8, 10]
    body = get(owner, "?user=u1&limit=2").json()
    assert [e["seq"] for e in body["results"]] == [1, 3]
    assert [e["seq"] for e in token_client(owner).get(body["next"]).json()["results"]] == [5, 7]


def test_tombstoned_events_are_marked(owner: Any, room: Room) -> None:
    fill(room, 5)
    Event.objects.create(room=room, seq=6, type="erase", user_id="u", payload='{"seq":2}', ts=0)
    Event.objects.create(room=room, seq=7, type="erase", user_id="u", payload='{"seq":5}', ts=0)
    marks = {e["seq"]: (e["tombstoned"], e["erasedBy"]) for e in get(owner, "").json()["results"]}
    assert marks[2] == (True, 6) and marks[5] == (True, 7)
    assert marks[1] == marks[3] == marks[4] == marks[6] == (False, None)
    # A page that does not contain the erase still knows.
    assert get(owner, "?since=1&limit=1").json()["results"][0]["erasedBy"] == 6
    assert get(owner, "?before=3&limit=1").json()["results"][0]["erasedBy"] == 6


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?since=-1",
        "?since=1.5",
        "?since=99999999999999999999999",
        "?before=0",
        "?since=1&before=5",
        "?type=DRAW",
        "?type=" + "a" * 33,
        "?user=" + "u" * 129,
        "?user=%00",
    ],
)
def test_bad_parameters_are_400(owner: Any, room: Room, query: str) -> None:
    response = get(owner, query)
    assert response.status_code == 400, (query, response.content)
    assert isinstance(response.json(), dict)


def test_max_limit_is_1000(owner: Any, room: Room) -> None:
    fill(room, 1200)
    assert len(get(owner, "?limit=1000").json()["results"]) == 1000


def test_page_queries_use_an_index_not_a_scan(room: Room) -> None:
    """The cost of a page must not grow with the room's log: every query is an index range."""
    fill(room, 50)
    Event.objects.create(room=room, seq=51, type="erase", user_id="u", payload='{"seq":2}', ts=0)
    if connection.vendor != "sqlite":  # pragma: no cover - the plan syntax below is SQLite's
        pytest.skip("EXPLAIN QUERY PLAN is SQLite syntax")
    queries = [
        Query(since=10, before=None, limit=100),
        Query(since=None, before=40, limit=100),
        Query(since=10, before=None, limit=100, type="draw"),
        Query(since=10, before=None, limit=100, user="u1"),
    ]
    plans = []
    for query in queries:
        # The exact SQL history.page ran, and how SQLite runs it.
        with CaptureQueriesContext(connection) as ctx:
            history.page(room.pk, query)
        plans.append(_plan(ctx.captured_queries[-1]["sql"]))
    with connection.cursor() as cursor:
        sql = history._ERASED_SQL["sqlite"]
        cursor.execute("EXPLAIN QUERY PLAN " + sql, [room.pk, 1, 50])
        plans.append(" | ".join(row[-1] for row in cursor.fetchall()))
    for plan in plans:
        assert "USING" in plan and "INDEX" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # no sort: the index gives the order
    assert "rooms_event_erase_target" in plans[-1]
    assert "rooms_event_room_type_seq" in plans[2] and "rooms_event_room_user_seq" in plans[3]


def _plan(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql)
        return " | ".join(row[-1] for row in cursor.fetchall())
