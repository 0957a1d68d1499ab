"""The seat booking kind: a fixed seat map, one holder per seat, ever."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms.kinds.base import DurableEvent, Incoming, Reject
from rooms.kinds.seats import Seats
from rooms.models import Event, Room
from tests.fixtures.api import token_client

SEAT_MAP = {"seats": ["A1", "A2", "A3", "B1", "B2"], "max_per_user": 2}


def holders_from_log(log: list[tuple[str, str, str]]) -> dict[str, str]:
    """Replay ``(type, user, seat)`` and fail on any double booking."""
    held: dict[str, str] = {}
    for type_, user, seat in log:
        if type_ == "book":
            assert seat not in held, f"seat {seat} booked twice"
            held[seat] = user
        else:
            assert held.pop(seat) == user
    return held


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["book", "release"]), st.sampled_from("uvw"), st.sampled_from(["A1", "A2", "A3", "B1", "B2", "Z9"])), max_size=80))
def test_no_seat_is_ever_held_twice_and_limits_hold(script: Any) -> None:
    kind = Seats(SEAT_MAP)
    state = kind.initial_state()
    log = []
    for type_, user, seat in script:
        try:
            kind.check(state, Incoming(type_, user, {"seat": seat}))
        except Reject as exc:
            assert exc.code in {"seat_taken", "no_such_seat", "seat_limit", "not_yours"}
            continue
        log.append((type_, user, seat))
        state = kind.apply(state, DurableEvent(len(log), type_, user, {"seat": seat}, 0))
    assert holders_from_log(log) == state
    assert all(list(state.values()).count(u) <= 2 for u in "uvw")
    snap = kind.snapshot(state)
    assert snap["free"] == 5 - len(state) and snap["seats"] == SEAT_MAP["seats"]


@pytest.mark.parametrize(
    "bad",
    [{}, {"seats": []}, {"seats": "A1"}, {"seats": ["A1", "A1"]}, {"seats": ["a b"]}, {"seats": ["A1"], "max_per_user": 0}],
)
def test_a_bad_seat_map_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Seats.check_settings(bad)


@pytest.mark.django_db(transaction=True)
def test_rest_room_creation_checks_the_seat_map(owner: Any) -> None:
    client = token_client(owner)
    bad = {"slug": "hall", "kind": "seats", "settings": {"seats": "A1"}}
    refused = client.post("/api/rooms/", bad, content_type="application/json")
    assert refused.status_code == 400 and "seats" in refused.json()["settings"][0]
    good = {"slug": "hall", "kind": "seats", "settings": SEAT_MAP}
    made = client.post("/api/rooms/", good, content_type="application/json")
    assert made.status_code == 201, made.json()


@pytest.mark.django_db(transaction=True)
async def test_two_users_race_for_one_seat_one_wins_the_other_gets_seat_taken(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="gig", kind="seats", settings=SEAT_MAP)
    a = await connect("gig", userId="a")
    b = await connect("gig", userId="b")
    assert a.welcome["state"] == {"seats": SEAT_MAP["seats"], "booked": {}, "free": 5}
    await asyncio.gather(a.send("book", {"seat": "A1"}, id="a1"), b.send("book", {"seat": "A1"}, id="b1"))
    got = {}
    for name, client in (("a", a), ("b", b)):
        while True:
            frame = await client.recv()
            if frame.get("id") in ("a1", "b1"):
                got[name] = frame
                break
    kinds = sorted(f["type"] for f in got.values())
    assert kinds == ["ack", "error"]
    loser = next(f for f in got.values() if f["type"] == "error")
    assert (loser["reason"], loser["code"], loser["detail"]) == ("invalid_message", "seat_taken", "book: seat 'A1' is already booked")
    await b.send("release", {"seat": "A2"}, id="r1")
    assert (await b.recv_type("error"))["code"] == "not_yours"


@pytest.mark.django_db(transaction=True)
async def test_no_double_booking_under_load(connect: Any) -> None:
    """30 users hammer 20 seats with books and releases; the log replays clean."""
    seats = [f"S{i}" for i in range(20)]
    await database_sync_to_async(Room.objects.create)(slug="rush", kind="seats", settings={"seats": seats, "max_per_user": 3})
    clients = [await connect("rush", userId=f"u{i}") for i in range(30)]
    rng = random.Random(7)

    async def hammer(i: int, client: Any) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for n in range(15):
            type_ = "book" if rng.random() < 0.75 else "release"
            await client.send(type_, {"seat": rng.choice(seats)}, id=f"{i}-{n}")
        replies = 0
        while replies < 15:
            frame = await client.recv(5.0)
            if frame.get("type") in ("ack", "error") and "id" in frame:
                replies += 1
                out.append((frame["type"], frame))
        return out

    results = await asyncio.gather(*(hammer(i, c) for i, c in enumerate(clients)))
    acks = sum(1 for r in results for t, _ in r if t == "ack")
    codes = {f.get("code") for r in results for t, f in r if t == "error"}
    assert codes <= {"seat_taken", "seat_limit", "not_yours"}, codes
    rows = await database_sync_to_async(
        lambda: list(Event.objects.filter(room__slug="rush").order_by("seq").values_list("type", "user_id", "payload"))
    )()
    log = [(t, u, orjson.loads(p)["seat"]) for t, u, p in rows]
    assert len(log) == acks and acks > 20
    held = holders_from_log(log)
    late = await connect("rush", userId="late")
    assert late.welcome["state"]["booked"] == held
