"""A room's state as it was right after event N: nearest snapshot + log fold.

Read from the database only (committed events, which is all any client has
seen, by the output gate), so any process can answer, the actor is not woken
and a slow read never delays the room. The fold is the kind's own (through
``RoomKind.apply``, restores included), the same the actor runs on wake-up, so
the result equals the state a client saw after event N.
"""

from __future__ import annotations

from typing import Any

import orjson

from rooms.kinds import kind_class
from rooms.kinds.base import DurableEvent, RoomKind
from rooms.models import Event, Room, Snapshot

# Rows fetched per round trip while folding (bounded memory on long tails).
FOLD_CHUNK_EVENTS = 2000


class SeqAhead(LookupError):
    """The room has no event with that seq yet."""


def state_at(room: Room, seq: int | None = None) -> tuple[RoomKind, int, Any]:
    """``(kind, seq, state)``: the state right after event ``seq`` (None: the latest)."""
    kind = kind_class(room.kind)(room.settings or {})
    snapshots = Snapshot.objects.filter(room=room)
    if seq is not None:
        snapshots = snapshots.filter(seq__lte=seq)
    snap = snapshots.order_by("-seq").values_list("seq", "state").first()
    if snap is None:
        base, state = 0, kind.initial_state()
    else:
        base, state = snap[0], kind.load_state(orjson.loads(snap[1]))
    events = Event.objects.filter(room=room, seq__gt=base)
    if seq is not None:
        events = events.filter(seq__lte=seq)
    last = base
    rows = events.order_by("seq").values_list("seq", "type", "user_id", "payload", "ts")
    for event_seq, type_, user_id, payload, ts in rows.iterator(chunk_size=FOLD_CHUNK_EVENTS):
        state = kind.apply(state, DurableEvent(event_seq, type_, user_id, orjson.loads(payload) if payload else None, ts))
        last = event_seq
    if seq is not None and last < seq:
        raise SeqAhead(f"the room's latest seq is {last}")
    return kind, last, state
