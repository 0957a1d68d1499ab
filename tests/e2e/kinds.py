"""Room kinds that the end-to-end servers load (``DORM_EXTRA_KINDS``)."""

from __future__ import annotations

from typing import Any

from rooms.kinds.base import DurableEvent, Incoming, RoomKind, durable
from rooms.protocol import now_ms
from rooms.runtime.actor import RoomContext
from rooms.schema import Int, Obj, Str

# Never in a log line (the failure message carries it into the admin only).
SECRET = "s3cr3t-alarm-payload"


class AlarmProbe(RoomKind):
    """``arm`` sets an alarm; the alarm broadcasts ``attempt``, fails as told,
    then publishes a durable ``rang``."""

    name = "probe"
    messages = {
        "arm": durable(Obj({"atMs": Int(0, 2**53), "name": Str(0, 64), "fail": Int(0, 10)}, required=("atMs",))),
        "disarm": durable(Obj({"name": Str(0, 64)})),
        # Published by the alarm only (no token carries the "server" scope).
        "rang": durable(Obj({"name": Str(0, 64), "attempt": Int(1, 100), "at": Int(0, 2**53)}), scope="server"),
    }

    def initial_state(self) -> dict[str, Any]:
        return {"rang": []}

    def fold(self, state: dict[str, Any], event: DurableEvent) -> dict[str, Any]:
        if event.type == "rang":
            state["rang"].append(event.payload["name"])
        return state

    async def on_message(self, room: RoomContext, message: Incoming, seq: int | None) -> None:
        name = message.payload.get("name", "")
        if message.type == "arm":
            room.set_alarm(message.payload["atMs"] / 1000, name)
            room.storage.put(f"fail:{name}", message.payload.get("fail", 0))
        elif message.type == "disarm":
            room.delete_alarm(name)

    async def on_alarm(self, room: RoomContext, name: str) -> None:
        attempt = room.alarm_retry_count + 1
        at = now_ms()
        await room.broadcast("attempt", {"name": name, "attempt": attempt, "at": at})
        if attempt <= await room.storage.get(f"fail:{name}", 0):
            raise RuntimeError(f"planned failure {attempt} {SECRET}")
        room.publish("rang", {"name": name, "attempt": attempt, "at": at})
