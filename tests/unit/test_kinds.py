"""Room kinds are pure folds of their log: same log, same state, always."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms.kinds import kind_class
from rooms.kinds.base import DurableEvent, Incoming, Reject, RoomKind, durable
from rooms.kinds.chat import Chat
from rooms.kinds.whiteboard import Whiteboard
from rooms.schema import Json

USERS = ["u1", "u2", "u3"]

actions = st.lists(
    st.tuples(
        st.sampled_from(["draw", "erase", "undo", "redo"]),
        st.sampled_from(USERS),
        st.integers(min_value=1, max_value=40),
    ),
    max_size=60,
)


def apply(kind: RoomKind, steps: list[tuple[str, str, int]]) -> tuple[Any, list[DurableEvent]]:
    """Run messages through check + fold like the actor does; return state and log."""
    state = kind.initial_state()
    log: list[DurableEvent] = []
    for type_, user, n in steps:
        payload: Any = {"x": n} if type_ == "draw" else {"seq": n} if type_ == "erase" else None
        try:
            kind.check(state, Incoming(type_, user, payload))
        except Reject:
            continue
        event = DurableEvent(len(log) + 1, type_, user, payload, 0)
        log.append(event)
        state = kind.fold(state, event)
    return state, log


@settings(max_examples=200)
@given(actions, st.integers(min_value=0, max_value=60))
def test_whiteboard_state_from_snapshot_plus_tail_equals_the_full_fold(steps: Any, cut: int) -> None:
    kind = Whiteboard()
    state, log = apply(kind, steps)
    cut = min(cut, len(log))
    # What a wake-up does: load a stored snapshot, fold the log after it.
    partial = kind.initial_state()
    for event in log[:cut]:
        partial = kind.fold(partial, event)
    stored = orjson.loads(orjson.dumps(kind.dump_state(partial)))
    resumed = kind.load_state(stored)
    for event in log[cut:]:
        resumed = kind.fold(resumed, event)
    assert kind.snapshot(resumed) == kind.snapshot(state)
    # Strokes in the snapshot are sorted, unique and live.
    seqs = [s["seq"] for s in kind.snapshot(state)["strokes"]]
    assert seqs == sorted(set(seqs))


def test_whiteboard_undo_redo_is_per_user_and_a_new_stroke_ends_redo() -> None:
    kind = Whiteboard()
    state, _ = apply(kind, [("draw", "u1", 1), ("draw", "u2", 2), ("draw", "u1", 3), ("undo", "u1", 0)])
    assert [s["payload"]["x"] for s in kind.snapshot(state)["strokes"]] == [1, 2]
    state = kind.fold(state, DurableEvent(10, "redo", "u1", None, 0))
    assert [s["payload"]["x"] for s in kind.snapshot(state)["strokes"]] == [1, 2, 3]
    state = kind.fold(state, DurableEvent(11, "undo", "u1", None, 0))
    state = kind.fold(state, DurableEvent(12, "draw", "u1", {"x": 4}, 0))
    with pytest.raises(Reject):
        kind.check(state, Incoming("redo", "u1", None))
    with pytest.raises(Reject):
        kind.check(state, Incoming("undo", "u3", None))


def test_whiteboard_erase_needs_a_live_stroke() -> None:
    kind = Whiteboard()
    state, _ = apply(kind, [("draw", "u1", 1)])
    kind.check(state, Incoming("erase", "u2", {"seq": 1}))
    state = kind.fold(state, DurableEvent(2, "erase", "u2", {"seq": 1}, 0))
    assert kind.snapshot(state) == {"strokes": []}
    with pytest.raises(Reject):
        kind.check(state, Incoming("erase", "u2", {"seq": 1}))
    with pytest.raises(Reject):  # the erased stroke is not undoable either
        kind.check(state, Incoming("undo", "u1", None))


def test_chat_keeps_the_last_fifty_and_survives_a_snapshot_round_trip() -> None:
    kind = Chat()
    state = kind.initial_state()
    for i in range(1, 61):
        state = kind.fold(state, DurableEvent(i, "message", "u", {"text": str(i)}, i))
    restored = kind.load_state(orjson.loads(orjson.dumps(kind.dump_state(state))))
    assert kind.snapshot(restored) == kind.snapshot(state)
    assert [m["seq"] for m in kind.snapshot(state)["messages"]] == list(range(11, 61))


def test_kinds_are_found_by_name_and_reserved_types_are_refused() -> None:
    assert kind_class("whiteboard") is Whiteboard and kind_class("chat") is Chat
    with pytest.raises(TypeError):

        class Broken(RoomKind):
            messages = {"ack": durable(Json())}


def test_builtin_types_reach_every_kind() -> None:
    assert Chat.message_type("cursor") is not None and Chat.message_type("presence") is not None
    assert Chat.message_type("draw") is None
