"""Seat booking: a fixed seat map, ``book`` and ``release``, never a seat twice.

The seat map is the room's settings, fixed when the room is created::

    {"seats": ["A1", "A2", "B1", ...], "max_per_user": 4}

Two users racing for one seat are ordered by the room's one writer (its actor,
on whichever process holds the room's lease in the distributed mode): the
first ``book`` folds, and ``check`` refuses the second against that state
before it gets a seq. The loser gets ``invalid_message`` with
``code: "seat_taken"`` and a detail naming the seat; nothing is stored for it.

The snapshot lists the seat map in its order and who holds each booked seat.
"""

from __future__ import annotations

import re
from typing import Any

from rooms.kinds.base import DurableEvent, Incoming, Reject, RoomKind, durable
from rooms.schema import Obj, Str

SEAT_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,16}")
MAX_SEATS = 10_000
DEFAULT_MAX_PER_USER = 10

SEAT_REF = Obj({"seat": Str(1, 16)})


class Seats(RoomKind):
    name = "seats"
    messages = {
        "book": durable(SEAT_REF, max_payload_bytes=64),
        "release": durable(SEAT_REF, max_payload_bytes=64),
    }

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.check_settings(self.settings)
        self.seat_map: list[str] = list(self.settings.get("seats", []))
        self.seat_set = frozenset(self.seat_map)
        self.max_per_user = int(self.settings.get("max_per_user", DEFAULT_MAX_PER_USER))

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        seats = settings.get("seats")
        if not isinstance(seats, list) or not 0 < len(seats) <= MAX_SEATS:
            raise ValueError(f"seats: a list of 1-{MAX_SEATS} seat ids")
        if not all(isinstance(s, str) and SEAT_ID_RE.fullmatch(s) for s in seats):
            raise ValueError("seats: each seat id is 1-16 characters of A-Z a-z 0-9 _ . -")
        if len(set(seats)) != len(seats):
            raise ValueError("seats: seat ids must be unique")
        limit = settings.get("max_per_user", DEFAULT_MAX_PER_USER)
        if type(limit) is not int or not 1 <= limit <= MAX_SEATS:
            raise ValueError(f"max_per_user: an integer 1-{MAX_SEATS}")

    # State: seat id -> the user holding it.
    def initial_state(self) -> dict[str, str]:
        return {}

    def check(self, state: dict[str, str], message: Incoming) -> None:
        seat = message.payload["seat"]
        if seat not in self.seat_set:
            raise Reject(f"{message.type}: no seat {seat!r} in this room", code="no_such_seat")
        holder = state.get(seat)
        if message.type == "book":
            if holder is not None:
                raise Reject(
                    f"book: seat {seat!r} is already booked" + (" by you" if holder == message.user_id else ""),
                    code="seat_taken",
                )
            held = sum(1 for h in state.values() if h == message.user_id)
            if held >= self.max_per_user:
                raise Reject(f"book: at most {self.max_per_user} seats per user", code="seat_limit")
        elif holder != message.user_id:
            raise Reject(f"release: seat {seat!r} is not booked by you", code="not_yours")

    def fold(self, state: dict[str, str], event: DurableEvent) -> dict[str, str]:
        seat = event.payload["seat"]
        if event.type == "book":
            state[seat] = event.user_id
        elif state.get(seat) == event.user_id:
            del state[seat]
        return state

    def snapshot(self, state: dict[str, str]) -> dict[str, Any]:
        return {"seats": self.seat_map, "booked": dict(state), "free": len(self.seat_map) - len(state)}
