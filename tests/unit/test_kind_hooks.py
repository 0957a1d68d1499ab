"""Tiny room kinds defined here, one per behaviour of the kind API."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings

from rooms.kinds.base import DurableEvent, Incoming, Reject, RoomKind, durable, ephemeral
from rooms.models import Room, StoredValue
from rooms.runtime.actor import RoomContext
from rooms.runtime.messages import Peer
from rooms.schema import Int, Json, Obj

pytestmark = pytest.mark.django_db(transaction=True)


class Counter(RoomKind):
    name = "counter"
    messages = {"add": durable(Obj({"n": Int(-100, 100)})), "wave": ephemeral(Json(max_depth=2))}

    def initial_state(self) -> dict[str, int]:
        return {"total": 0}

    def check(self, state: dict[str, int], message: Incoming) -> None:
        if state["total"] + message.payload["n"] < 0:
            raise Reject("add: the total cannot go below zero")

    def fold(self, state: dict[str, int], event: DurableEvent) -> dict[str, int]:
        state["total"] += event.payload["n"]
        return state


class Hooked(RoomKind):
    """Uses every hook and the storage API."""

    name = "hooked"
    messages = {"add": durable(Obj({"n": Int(0, 100)}))}

    async def on_start(self, room: RoomContext) -> None:
        boots = await room.storage.get("boots", 0)
        room.storage.put("boots", boots + 1)

    async def on_connect(self, room: RoomContext, peer: Peer) -> None:
        await room.send(peer, {"type": "greeting", "boots": await room.storage.get("boots")})

    async def on_message(self, room: RoomContext, message: Incoming, seq: int | None) -> None:
        room.storage.put("last", {"seq": seq, "by": message.user_id})
        await room.broadcast("echo", {"seq": seq})

    async def on_close(self, room: RoomContext, peer: Peer) -> None:
        room.storage.put(f"left:{peer.user_id}", True)


KINDS = {**settings.DORM.get("KINDS", {}), "counter": f"{__name__}.Counter", "hooked": f"{__name__}.Hooked"}


@pytest.fixture(autouse=True)
def _kinds() -> Any:
    from rooms.conf import DEFAULTS

    with override_settings(DORM={**settings.DORM, "KINDS": {**DEFAULTS["KINDS"], **KINDS}}):
        yield


async def make_room(slug: str, kind: str) -> None:
    await database_sync_to_async(Room.objects.create)(slug=slug, kind=kind)


@database_sync_to_async
def stored(slug: str) -> dict[str, str]:
    return dict(StoredValue.objects.filter(room__slug=slug).values_list("key", "value"))


async def test_a_page_of_code_makes_a_kind(connect: Any) -> None:
    await make_room("count", "counter")
    a = await connect("count", userId="a")
    assert a.welcome["state"] == {"total": 0}
    await a.send("add", {"n": -1}, id="neg")
    assert (await a.recv_type("error"))["detail"] == "add: the total cannot go below zero"
    await a.send("add", {"n": 5}, id="p")
    assert (await a.recv_type("ack"))["seq"] == 1
    b = await connect("count", userId="b")
    assert b.welcome["state"] == {"total": 5}


async def test_hooks_run_in_order_and_storage_commits_with_the_events(connect: Any) -> None:
    await make_room("hooks", "hooked")
    a = await connect("hooks", userId="a")
    assert await a.recv_type("greeting") == {"type": "greeting", "boots": 1}
    await a.send("add", {"n": 1}, id="x")
    assert (await a.recv_type("ack"))["seq"] == 1
    echo = await a.recv_type("echo")
    assert echo["payload"] == {"seq": 1}
    b = await connect("hooks", userId="b")
    await b.recv_type("greeting")
    await b.close()
    await a.send("add", {"n": 2}, id="y")  # flushes the on_close write too
    await a.recv_type("ack")
    values = await stored("hooks")
    assert values["boots"] == "1"
    assert values["left:b"] == "true"
    assert values["last"] == '{"seq":2,"by":"a"}'  # hook writes commit right after the batch
