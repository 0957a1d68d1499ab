"""Poll: durable votes, a server-side tally broadcast at most twice a second,
closed by the host or by a durable alarm at its deadline.

- ``vote`` ``{"option": i}``: durable, one per user, changeable (the last one
  counts). Refused once the poll is closed or its deadline has passed, even
  if the alarm has not run yet, so the result never depends on its timing.
- ``close_poll`` (host scope; optional ``{"reason"}``): durable; closes the poll.
- ``deadline`` ``{"at": unix_ms}`` (host scope): durable; (re)schedules the
  close with the room's durable alarm ``"deadline"``, which survives
  hibernation and restarts. ``settings["closesAt"]`` (unix ms) gives a new
  poll its first deadline.

The tally lives in the state (counts kept up to date by ``fold``), so a
joining client gets it in ``welcome.state`` and the ephemeral ``tally``
broadcast is a precomputed snapshot: ``{"counts", "total", "seq",
"closed"}``. A burst of votes costs at most one ``tally`` per
``TALLY_EVERY_SECONDS`` (an in-actor timer, so it stops with hibernation;
nothing is lost, the tally is in every welcome).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rooms.kinds.base import DurableEvent, Incoming, Reject, RoomKind, durable
from rooms.protocol import now_ms
from rooms.schema import Int, Obj, Optional, Str

if TYPE_CHECKING:
    from rooms.runtime.actor import RoomContext
    from rooms.runtime.timers import Timer

MAX_OPTIONS = 32
# At most one tally broadcast per this many seconds.
TALLY_EVERY_SECONDS = 0.5
DEADLINE_ALARM = "deadline"


class Poll(RoomKind):
    name = "poll"
    messages = {
        "vote": durable(Obj({"option": Int(0, MAX_OPTIONS - 1)})),
        "close_poll": durable(Optional(Obj({"reason": Str(1, 32)}, required=())), scope="host"),
        "deadline": durable(Obj({"at": Int(0, 2**53)}), scope="host"),
    }

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        options = self.settings.get("options")
        if not (isinstance(options, list) and 1 <= len(options) <= MAX_OPTIONS):
            options = ["yes", "no"]
        self.options = [str(o)[:200] for o in options]
        self.question = str(self.settings.get("question", ""))[:1000]
        self._tally_timer: Timer | None = None
        self._tally_dirty = False
        self._tally_sent_at = 0.0

    # -- state ---------------------------------------------------------------

    def initial_state(self) -> dict[str, Any]:
        closes_at = self.settings.get("closesAt")
        return {
            "votes": {},
            "counts": [0] * len(self.options),
            "closed": False,
            "closedBy": None,
            "closesAt": closes_at if isinstance(closes_at, int) and not isinstance(closes_at, bool) else None,
        }

    def check(self, state: dict[str, Any], message: Incoming) -> None:
        if state["closed"]:
            raise Reject(f"{message.type}: the poll is closed")
        if message.type == "vote":
            if message.payload["option"] >= len(self.options):
                raise Reject(f"vote: option must be below {len(self.options)}")
            if state["closesAt"] is not None and now_ms() >= state["closesAt"]:
                raise Reject("vote: the poll's deadline has passed")

    def fold(self, state: dict[str, Any], event: DurableEvent) -> dict[str, Any]:
        if event.type == "vote":
            option = event.payload["option"]
            previous = state["votes"].get(event.user_id)
            if previous is not None:
                state["counts"][previous] -= 1
            state["votes"][event.user_id] = option
            state["counts"][option] += 1
        elif event.type == "close_poll":
            state["closed"] = True
            state["closedBy"] = (event.payload or {}).get("reason") or "host"
        elif event.type == "deadline":
            state["closesAt"] = event.payload["at"]
        return state

    def tally(self, state: dict[str, Any], seq: int) -> dict[str, Any]:
        counts = state["counts"]
        return {"counts": list(counts), "total": sum(counts), "seq": seq, "closed": state["closed"]}

    def snapshot(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "question": self.question,
            "options": self.options,
            "counts": list(state["counts"]),
            "total": sum(state["counts"]),
            "closed": state["closed"],
            "closedBy": state["closedBy"],
            "closesAt": state["closesAt"],
        }

    # -- hooks ---------------------------------------------------------------

    async def on_start(self, room: RoomContext) -> None:
        state = room.state
        if state["closesAt"] is not None and not state["closed"] and room.get_alarm(DEADLINE_ALARM) is None:
            room.set_alarm(state["closesAt"] / 1000, DEADLINE_ALARM)

    async def on_message(self, room: RoomContext, message: Incoming, seq: int | None) -> None:
        if message.type == "deadline":
            room.set_alarm(message.payload["at"] / 1000, DEADLINE_ALARM)
        elif message.type == "close_poll":
            room.delete_alarm(DEADLINE_ALARM)
        self._tally_soon(room)

    async def on_alarm(self, room: RoomContext, name: str) -> None:
        if name != DEADLINE_ALARM or room.state["closed"]:
            return
        room.publish("close_poll", {"reason": "deadline"})
        self._tally_soon(room)

    def _tally_soon(self, room: RoomContext) -> None:
        """Broadcast the tally now, or when TALLY_EVERY_SECONDS has passed since the last."""
        self._tally_dirty = True
        if self._tally_timer is not None:
            return
        wait = max(0.0, self._tally_sent_at + TALLY_EVERY_SECONDS - time.monotonic())
        # A timer even when wait is 0: it runs after the current turn's commit,
        # so the tally never shows an event before the event itself is durable.
        self._tally_timer = room.after(wait, self._send_tally)

    async def _send_tally(self, room: RoomContext) -> None:
        self._tally_timer = None
        if not self._tally_dirty:
            return
        self._tally_dirty = False
        self._tally_sent_at = time.monotonic()
        await room.broadcast("tally", self.tally(room.state, room.seq))
