"""The Yjs document kind in process: pycrdt clients speaking y-protocols over binary frames."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings
from pycrdt import Doc, Text, YMessageType, YSyncMessageType, create_sync_message, create_update_message, handle_sync_message

from rooms.models import Room, StoredValue

pytestmark = pytest.mark.django_db(transaction=True)


class YClient:
    """A pycrdt document synced over one binary socket."""

    def __init__(self, client: Any) -> None:
        self.ws = client.ws
        self.doc = Doc()
        self.text = self.doc.get("body", type=Text)

    async def recv(self, timeout: float = 2.0) -> bytes:
        out = await self.ws.receive_output(timeout)
        assert out["type"] == "websocket.send" and out.get("bytes") is not None, f"not a binary frame: {out}"
        return out["bytes"]

    async def handshake(self) -> None:
        """What y-websocket does on open: answer the server's step 1, send ours."""
        step1 = await self.recv()
        assert step1[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1])
        await self.ws.send_to(bytes_data=handle_sync_message(step1[1:], self.doc))
        await self.ws.send_to(bytes_data=create_sync_message(self.doc))
        step2 = await self.recv()
        assert step2[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])
        handle_sync_message(step2[1:], self.doc)

    async def edit(self, index: int, chars: str) -> None:
        updates: list[bytes] = []
        sub = self.doc.observe(lambda event: updates.append(event.update))
        self.text.insert(index, chars)
        self.doc.unobserve(sub)
        for update in updates:
            await self.ws.send_to(bytes_data=create_update_message(update))

    async def take_update(self) -> None:
        message = await self.recv()
        assert message[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_UPDATE])
        handle_sync_message(message[1:], self.doc)


async def open_doc(connect: Any, room: str, user: str) -> YClient:
    client = YClient(await connect(room, userId=user, expect_welcome=False))
    await client.handshake()
    return client


@database_sync_to_async
def stored_text(room: str) -> str | None:
    value = StoredValue.objects.filter(room__slug=room, key="doc").values_list("value", flat=True).first()
    if value is None:
        return None
    doc = Doc()
    doc.apply_update(base64.b64decode(orjson.loads(value)))
    return str(doc.get("body", type=Text))


async def test_edits_merge_and_reach_the_other_client_with_no_json_frames(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="notes", kind="yjs")
    a = await open_doc(connect, "notes", "a")
    b = await open_doc(connect, "notes", "b")
    await a.edit(0, "hello")
    await b.take_update()
    await b.edit(5, " world")
    await a.take_update()
    assert str(a.text) == str(b.text) == "hello world"
    # A malformed frame is dropped; the room and the sockets go on.
    await a.ws.send_to(bytes_data=b"\x00\x02\xff\xff\xff")
    await b.edit(0, ">")
    await a.take_update()
    assert str(a.text) == ">hello world"
    # JSON is not spoken on a binary socket: a JSON frame gets no reply.
    await a.ws.send_to(text_data='{"type":"ping"}')
    assert await a.ws.receive_nothing(0.2)
    # A newcomer gets the whole document in its sync step 2.
    c = await open_doc(connect, "notes", "c")
    assert str(c.text) == ">hello world"


async def test_the_document_is_saved_debounced_and_on_hibernation(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="draft", kind="yjs")
    with override_settings(DORM={**settings.DORM, "HIBERNATE_AFTER_SECONDS": 0.5}):
        a = await open_doc(connect, "draft", "a")
        for i in range(10):
            await a.edit(0, str(i))
        assert await stored_text("draft") is None  # not per keystroke
        await asyncio.sleep(1.2)  # the room sleeps before the 2 s debounce: on_sleep saved it
        assert await stored_text("draft") == "9876543210"
        # A wake loads it: a new client syncs the whole document.
        b = await open_doc(connect, "draft", "b")
        assert str(b.text) == "9876543210"


async def test_a_burst_of_edits_is_one_debounced_save_while_awake(connect: Any, monkeypatch: Any, caplog: Any) -> None:
    from rooms.kinds import yjs

    caplog.set_level("INFO", logger="dorm.rooms")
    monkeypatch.setattr(yjs, "SAVE_DEBOUNCE_SECONDS", 0.3)
    await database_sync_to_async(Room.objects.create)(slug="burst", kind="yjs")
    a = await open_doc(connect, "burst", "a")
    for i in range(20):
        await a.edit(0, "x")
    await asyncio.sleep(0.1)
    assert await stored_text("burst") is None
    await asyncio.sleep(0.5)
    assert await stored_text("burst") == "x" * 20
    saves = [r.getMessage() for r in caplog.records if r.getMessage().startswith("yjs doc saved")]
    assert len(saves) == 1 and "room=burst" in saves[0]
