"""Chat: durable messages, ephemeral typing; the snapshot is the last messages."""

from __future__ import annotations

from collections import deque
from typing import Any

from rooms.kinds.base import DurableEvent, RoomKind, durable, ephemeral
from rooms.schema import Json, Obj, Str

# How many messages a joining client is shown.
SNAPSHOT_MESSAGES = 50


class Chat(RoomKind):
    name = "chat"
    messages = {
        "message": durable(Obj({"text": Str(1, 4000)})),
        "typing": ephemeral(Json(max_depth=2, max_keys=8, max_string_chars=64), max_payload_bytes=256),
    }

    def initial_state(self) -> deque[dict[str, Any]]:
        return deque(maxlen=SNAPSHOT_MESSAGES)

    def fold(self, state: deque[dict[str, Any]], event: DurableEvent) -> deque[dict[str, Any]]:
        state.append({"seq": event.seq, "userId": event.user_id, "text": event.payload["text"], "ts": event.ts})
        return state

    def snapshot(self, state: deque[dict[str, Any]]) -> dict[str, Any]:
        return {"messages": list(state)}

    def dump_state(self, state: deque[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(state)

    def load_state(self, data: list[dict[str, Any]]) -> deque[dict[str, Any]]:
        return deque(data, maxlen=SNAPSHOT_MESSAGES)
