"""Whiteboard: strokes, erase (a tombstone, never a delete), per-user undo/redo.

``clear`` (host scope only) wipes the board for everyone, undo history too.

The snapshot a joining client sees is the live strokes in seq order. Undo and
redo are durable events too, so the board is a pure fold of its log and every
client (and every wake-up from hibernation) computes the same board.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rooms.kinds.base import DurableEvent, Incoming, Reject, RoomKind, durable
from rooms.schema import Int, Json, Nothing, Obj

# Stroke coordinates and styles: any JSON object of finite numbers within +/-1e6.
STROKE_NUMBER_BOUND = 1e6
STROKE_MAX_BYTES = 16 * 1024


@dataclass(slots=True)
class Board:
    # Live strokes by seq: {"seq", "userId", "payload"}.
    strokes: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Per user, the seqs of their strokes in drawing order (undo candidates;
    # erased ones are skipped lazily).
    drawn: dict[str, list[int]] = field(default_factory=dict)
    # Per user, strokes they undid, newest last (the redo stack).
    undone: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def last_live_stroke(self, user_id: str) -> int | None:
        mine = self.drawn.get(user_id)
        while mine:
            if mine[-1] in self.strokes:
                return mine[-1]
            mine.pop()  # erased by someone: no longer undoable
        return None


class Whiteboard(RoomKind):
    name = "whiteboard"
    messages = {
        "draw": durable(
            Json(object_only=True, number_bound=STROKE_NUMBER_BOUND), max_payload_bytes=STROKE_MAX_BYTES
        ),
        "erase": durable(Obj({"seq": Int(1, 2**53)}), max_payload_bytes=128),
        "undo": durable(Nothing(), max_payload_bytes=16),
        "redo": durable(Nothing(), max_payload_bytes=16),
        # Everyone's strokes at once: the room's host only (a token with scope "host").
        "clear": durable(Nothing(), max_payload_bytes=16, scope="host"),
    }

    def initial_state(self) -> Board:
        return Board()

    def check(self, state: Board, message: Incoming) -> None:
        if message.type == "erase":
            if message.payload["seq"] not in state.strokes:
                raise Reject("erase: no live stroke with that seq")
        elif message.type == "undo":
            if state.last_live_stroke(message.user_id) is None:
                raise Reject("undo: nothing to undo")
        elif message.type == "redo":
            if not state.undone.get(message.user_id):
                raise Reject("redo: nothing to redo")

    def fold(self, state: Board, event: DurableEvent) -> Board:
        user = event.user_id
        if event.type == "draw":
            state.strokes[event.seq] = {"seq": event.seq, "userId": user, "payload": event.payload}
            state.drawn.setdefault(user, []).append(event.seq)
            # A new stroke ends the redo history, as in every drawing app.
            state.undone.pop(user, None)
        elif event.type == "erase":
            state.strokes.pop(event.payload["seq"], None)
        elif event.type == "undo":
            target = state.last_live_stroke(user)
            if target is not None:
                state.drawn[user].pop()
                state.undone.setdefault(user, []).append(state.strokes.pop(target))
        elif event.type == "clear":
            state.strokes.clear()
            state.drawn.clear()
            state.undone.clear()
        elif event.type == "redo":
            stack = state.undone.get(user)
            if stack:
                stroke = stack.pop()
                state.strokes[stroke["seq"]] = stroke
                state.drawn.setdefault(user, []).append(stroke["seq"])
        return state

    def snapshot(self, state: Board) -> dict[str, Any]:
        return {"strokes": sorted(state.strokes.values(), key=lambda s: s["seq"])}

    def dump_state(self, state: Board) -> dict[str, Any]:
        return {
            "strokes": sorted(state.strokes.values(), key=lambda s: s["seq"]),
            "drawn": state.drawn,
            "undone": state.undone,
        }

    def load_state(self, data: dict[str, Any]) -> Board:
        return Board(
            strokes={s["seq"]: s for s in data.get("strokes", [])},
            drawn={u: list(v) for u, v in data.get("drawn", {}).items()},
            undone={u: list(v) for u, v in data.get("undone", {}).items()},
        )
