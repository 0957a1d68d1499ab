"""Frames are checked at the edge: what is refused never reaches the room's actor."""

from __future__ import annotations

from typing import Any

import pytest

from rooms import tokens
from rooms.runtime.messages import Frame

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def submitted_frames(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> list[Frame]:
    """Every frame handed to an actor (a capture of the consumer's one output)."""
    frames: list[Frame] = []
    real = runtime.registry.submit

    def capture(room: str, item: Any) -> None:
        if isinstance(item, Frame):
            frames.append(item)
        real(room, item)

    monkeypatch.setattr(runtime.registry, "submit", capture)
    return frames


@pytest.mark.parametrize(
    ("frame", "reason", "detail"),
    [
        ('{"type":"nope","id":"1"}', "unknown_type", None),
        ('{"type":"draw","id":"1","payload":{"x":1e300}}', "invalid_message", "payload: number out of range [-1e+06, 1e+06]"),
        ('{"type":"draw","id":"1","payload":[1]}', "invalid_message", "payload: must be an object"),
        ('{"type":"erase","id":"1","payload":{"seq":"1"}}', "invalid_message", "payload.seq: must be an integer"),
        ('{"type":"undo","id":"1","payload":{"x":1}}', "invalid_message", "payload: this message takes no payload"),
        ('{"type":"draw","id":"1","payload":{"s":"' + "x" * 17_000 + '"}}', "invalid_message", "payload: string longer than 16384 characters"),
        ('{"type":"draw","id":"1","payload":{"a":"' + "x" * 9000 + '","b":"' + "x" * 9000 + '"}}', "invalid_message", "payload: larger than 16384 bytes"),
        ('{"type":"clear","id":"1"}', "forbidden", None),
    ],
)
async def test_refused_at_the_edge(
    connect: Any, submitted_frames: list[Frame], frame: str, reason: str, detail: str | None
) -> None:
    a = await connect("edge", userId="a")
    await a.send_raw(frame)
    error = await a.recv_type("error")
    assert (error["reason"], error.get("detail"), error["id"]) == (reason, detail, "1")
    assert submitted_frames == []
    await a.send("draw", {"x": 1}, id="ok")
    assert (await a.recv_type("ack"))["seq"] == 1
    assert [f.type for f in submitted_frames] == ["draw"]


async def test_the_rooms_kind_decides_what_is_valid(connect: Any, submitted_frames: list[Frame]) -> None:
    from channels.db import database_sync_to_async

    from rooms.models import Room

    await database_sync_to_async(Room.objects.create)(slug="talk", kind="chat")
    token, _ = tokens.issue("v", "talk", "read")
    viewer = await connect("talk", token=token)
    writer = await connect("talk", userId="w")
    await writer.send("draw", {"x": 1}, id="1")  # a whiteboard type in a chat
    assert (await writer.recv_type("error"))["reason"] == "unknown_type"
    await viewer.send("message", {"text": "hi"}, id="2")
    assert (await viewer.recv_type("error"))["reason"] == "forbidden"
    await writer.send("message", {"text": "hi"}, id="3")
    assert (await writer.recv_type("ack"))["seq"] == 1
    assert [(f.type, f.client_id) for f in submitted_frames] == [("message", "3")]
