"""The actor's roster keeps each user's welcome entry as JSON, rebuilt on
every change: after any sequence of joins, leaves, status changes and
silences its welcome is what walking every member gives."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.backends.base import DEFAULT_STATUS
from presence.roster import Roster


def walked(roster: Roster) -> list[dict[str, Any]]:
    """The welcome computed from scratch, as the roster did before it kept entries."""
    out = []
    for user_id, conns in roster._users.items():
        fresh = [e for e in conns.values() if e[1]]
        if fresh:
            latest = max(fresh, key=lambda e: e[2])
            out.append({"userId": user_id, "status": latest[0], "connections": len(fresh)})
    return out


def by_user(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda e: e["userId"])


ops = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "status", "silent"]),
        st.sampled_from(["ann", "bob", "cy"]),
        st.sampled_from(["c1", "c2", "c3"]),
        st.sampled_from(["online", "away", "busy"]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_welcome_matches_a_walk_of_every_member(changes: list[tuple[str, str, str, str]]) -> None:
    roster = Roster()
    for op, user, conn, status in changes:
        if op == "join":
            roster.join(user, conn)
        elif op == "leave":
            roster.leave(user, conn)
        elif op == "status":
            roster.status(user, conn, status)
        else:
            roster.silent(user, conn)
        expected = walked(roster)
        assert by_user(roster.welcome()) == by_user(expected)
        assert by_user(orjson.loads(orjson.dumps({"p": roster.welcome_json()}))["p"]) == by_user(expected)
        assert roster.fresh_users() == len(expected)
        # Every connection, silent ones too: who a presence update reaches.
        assert roster.connections() == sum(len(conns) for conns in roster._users.values())
        for entry in expected:
            assert roster.status_of(entry["userId"]) == entry["status"]
    assert roster.status_of("nobody") == DEFAULT_STATUS


async def test_a_loaded_roster_has_its_entries() -> None:
    class Backend:
        async def members(self, room: str) -> list[dict[str, Any]]:
            return [{"userId": "ann", "connections": [{"connectionId": "c1", "status": "away"}]},
                    {"userId": "bob", "connections": [{"connectionId": "c2", "status": "online"},
                                                      {"connectionId": "c3", "status": "online"}]}]

    roster = Roster()
    roster.join("stale", "c9")
    await roster.load(Backend(), "r")  # type: ignore[arg-type]
    assert roster.welcome()[0] == {"userId": "ann", "status": "away", "connections": 1}
    assert roster.connections() == 3
    assert orjson.loads(orjson.dumps(roster.welcome_json())) == roster.welcome()


def test_entries_are_held_at_their_size() -> None:
    """orjson's bytes keep a 4 KiB buffer: held per user, that was 4 KiB
    more per idle connection (docs/performance.md)."""
    import tracemalloc

    roster = Roster()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(1000):
            roster.join(f"user-{i}", f"conn-{i}")
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert grown / 1000 < 1024, f"{grown / 1000:.0f} bytes per member"
