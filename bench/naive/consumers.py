"""The tutorial consumer: ``group_add`` on connect, ``group_send`` per frame.

It speaks the subset of Dorm's frames that the fan-out benchmark uses
(``welcome``, ``draw``, ``ack``) so that one load generator drives both
servers. There is no ``seq``, no validation and no persistence: this is the
cheapest fan-out that Channels offers out of the box.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer


class RoomConsumer(AsyncWebsocketConsumer):
    room: str = ""
    user_id: str = ""

    async def connect(self) -> None:
        self.room = str(self.scope["url_route"]["kwargs"]["room"])
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.user_id = query.get("userId", ["anonymous"])[0]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()
        await self.send(text_data=json.dumps({"type": "welcome", "room": self.room, "userId": self.user_id}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            return
        message = json.loads(text_data)
        if message.get("type") != "draw":
            return
        await self.channel_layer.group_send(
            self.room,
            {
                "type": "room.draw",
                "sender": self.channel_name,
                "userId": self.user_id,
                "payload": message.get("payload"),
                "ts": int(time.time() * 1000),
            },
        )
        if message.get("id") is not None:
            await self.send(text_data=json.dumps({"type": "ack", "id": message["id"]}))

    async def room_draw(self, event: dict[str, Any]) -> None:
        # Every member gets the group message; the sender skips its own, as
        # Dorm does (the sender gets an ack instead).
        if event["sender"] == self.channel_name:
            return
        frame = {"type": "draw", "userId": event["userId"], "payload": event["payload"], "ts": event["ts"]}
        await self.send(text_data=json.dumps(frame))
