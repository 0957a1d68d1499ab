"""Current state, state at seq N (time travel), and the staff restore."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings

from rooms.models import Event, Room, Snapshot
from tests.fixtures.api import asgi_request, token_client

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def make_room(slug: str, owner: Any, kind: str = "whiteboard") -> Room:
    return Room.objects.create(slug=slug, owner=owner, kind=kind)


async def get_state(user: Any, slug: str, query: str = "") -> Any:
    return await asgi_request(user, "GET", f"/api/rooms/{slug}/state{query}")


async def test_current_state_is_what_a_joining_client_is_shown(runtime: Any, connect: Any, owner: Any) -> None:
    await make_room("now", owner)
    a = await connect("now", userId="a")
    for i in range(3):
        await a.send("draw", {"i": i}, id=f"d{i}")
        await a.recv_type("ack")
    await a.send("erase", {"seq": 2}, id="e")
    await a.recv_type("ack")
    response = await get_state(owner, "now")
    assert response.status_code == 200
    late = await connect("now", userId="late")
    assert response.json() == {"seq": 4, "kind": "whiteboard", "state": late.welcome["state"]}


async def test_state_at_every_seq_equals_what_a_client_saw_then(runtime: Any, connect: Any, owner: Any) -> None:
    """Snapshots every 3 events: answers come from the nearest snapshot plus the log."""
    with override_settings(DORM={**settings.DORM, "SNAPSHOT_EVERY_EVENTS": 3}):
        await make_room("tt", owner)
        a = await connect("tt", userId="a")
        b_messages = [("draw", {"i": 0}), ("draw", {"i": 1}), ("undo", None), ("redo", None), ("draw", {"i": 2}),
                      ("erase", {"seq": 1}), ("draw", {"i": 3}), ("undo", None)]
        seen: dict[int, Any] = {}
        for n, (type_, payload) in enumerate(b_messages, start=1):
            await a.send(type_, payload, id=f"m{n}")
            assert (await a.recv_type("ack"))["seq"] == n
            # A client joining right after event n is shown the state at n.
            seen[n] = (await connect("tt", userId=f"j{n}")).welcome["state"]
        assert await database_sync_to_async(Snapshot.objects.filter(room__slug="tt").count)() >= 2
        for n, state in seen.items():
            response = await get_state(owner, "tt", f"?seq={n}")
            assert response.json() == {"seq": n, "kind": "whiteboard", "state": state}, n
        assert (await get_state(owner, "tt", "?seq=0")).json()["state"] == {"strokes": []}


@pytest.mark.parametrize("query", ["?seq=-1", "?seq=x", "?seq=99", "?seq=99999999999999999999999"])
def test_bad_or_future_seq_is_400(owner: Any, query: str) -> None:
    Room.objects.create(slug="f", owner=owner)
    response = token_client(owner).get(f"/api/rooms/f/state{query}")
    assert response.status_code == 400, response.content


def test_chat_state_from_the_log(owner: Any) -> None:
    room = Room.objects.create(slug="c", owner=owner, kind="chat")
    Event.objects.create(room=room, seq=1, type="message", user_id="u", payload='{"text":"hi"}', ts=5)
    body = token_client(owner).get("/api/rooms/c/state").json()
    assert body == {"seq": 1, "kind": "chat", "state": {"messages": [{"seq": 1, "userId": "u", "text": "hi", "ts": 5}]}}


async def test_restore_appends_an_event_and_every_client_resets(runtime: Any, connect: Any, owner: Any, staff: Any) -> None:
    await make_room("rs", owner)
    a = await connect("rs", userId="a")
    watcher = await connect("rs", userId="w")
    for i in range(4):
        await a.send("draw", {"i": i}, id=f"d{i}")
        await a.recv_type("ack")
    at_two = (await get_state(owner, "rs", "?seq=2")).json()["state"]

    response = await asgi_request(staff, "POST", "/api/rooms/rs/restore", {"seq": 2}, {"Idempotency-Key": "undo-incident"})
    assert response.status_code == 201, response.content
    assert response.json() == {"seq": 5, "id": "undo-incident"}
    restore = await watcher.recv_type("restore")
    assert restore["seq"] == 5 and restore["payload"]["seq"] == 2 and restore["payload"]["snapshot"] == at_two
    # History is kept, the state is the old one, and the room goes on from it.
    assert (await get_state(owner, "rs")).json() == {"seq": 5, "kind": "whiteboard", "state": at_two}
    assert (await connect("rs", userId="late")).welcome["state"] == at_two
    await a.send("erase", {"seq": 4}, id="gone")  # stroke 4 is not live any more
    assert (await a.recv_type("error"))["reason"] == "invalid_message"
    await a.send("draw", {"i": 9}, id="after")
    assert (await a.recv_type("ack"))["seq"] == 6
    assert (await get_state(owner, "rs", "?seq=5")).json()["state"] == at_two
    assert len((await get_state(owner, "rs")).json()["state"]["strokes"]) == 3
    # The same key again is the same restore.
    again = await asgi_request(staff, "POST", "/api/rooms/rs/restore", {"seq": 2}, {"Idempotency-Key": "undo-incident"})
    assert again.json() == {"seq": 5, "id": "undo-incident"}


async def test_the_restore_survives_a_wake_up(runtime: Any, connect: Any, owner: Any, staff: Any) -> None:
    with override_settings(DORM={**settings.DORM, "HIBERNATE_AFTER_SECONDS": 0.05}):
        await make_room("wake", owner)
        a = await connect("wake", userId="a")
        for i in range(3):
            await a.send("draw", {"i": i}, id=f"d{i}")
            await a.recv_type("ack")
        await a.close()
        assert (await asgi_request(staff, "POST", "/api/rooms/wake/restore", {"seq": 1})).status_code == 201
        await asyncio.sleep(0.2)  # hibernate; the next join folds the log again
        late = await connect("wake", userId="late")
        assert [s["seq"] for s in late.welcome["state"]["strokes"]] == [1]


async def test_restore_is_staff_only_and_validated(runtime: Any, owner: Any, staff: Any) -> None:
    await make_room("r", owner)
    assert (await asgi_request(owner, "POST", "/api/rooms/r/restore", {"seq": 0})).status_code == 403
    assert (await asgi_request(staff, "POST", "/api/rooms/r/restore", {"seq": 5})).status_code == 400
    assert (await asgi_request(staff, "POST", "/api/rooms/r/restore", {"seq": "x"})).status_code == 400
    assert (await asgi_request(staff, "POST", "/api/rooms/nope/restore", {"seq": 0})).status_code == 404
