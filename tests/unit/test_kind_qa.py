"""The Q&A kind: ask, one upvote per user per question, host-only pick and dismiss."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms import tokens
from rooms.kinds.base import DurableEvent, Incoming, Reject
from rooms.kinds.qa import QA
from rooms.models import Room


def run(kind: QA, steps: list[tuple[str, str, Any]]) -> tuple[Any, list[DurableEvent]]:
    """check + fold like the actor; refused messages leave no event."""
    state = kind.initial_state()
    log: list[DurableEvent] = []
    for type_, user, payload in steps:
        try:
            kind.check(state, Incoming(type_, user, payload))
        except Reject:
            continue
        event = DurableEvent(len(log) + 1, type_, user, payload, len(log))
        log.append(event)
        state = kind.apply(state, event)
    return state, log


steps = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), st.sampled_from(["a", "b", "c"]), st.builds(lambda n: {"text": f"q{n}"}, st.integers(0, 9))),
        st.tuples(
            st.sampled_from(["upvote", "upvote", "upvote", "pick", "dismiss"]),
            st.sampled_from(["a", "b", "c", "d"]),
            st.builds(lambda n: {"question": n}, st.integers(1, 30)),
        ),
    ),
    max_size=60,
)


@settings(max_examples=150)
@given(steps, st.integers(0, 60))
def test_snapshot_plus_tail_equals_the_full_fold_and_votes_are_ordered(script: Any, cut: int) -> None:
    kind = QA()
    state, log = run(kind, script)
    cut = min(cut, len(log))
    partial = kind.initial_state()
    for event in log[:cut]:
        partial = kind.apply(partial, event)
    resumed = kind.load_state(orjson.loads(orjson.dumps(kind.dump_state(partial))))
    for event in log[cut:]:
        resumed = kind.apply(resumed, event)
    snap = kind.snapshot(state)
    assert kind.snapshot(resumed) == snap
    keys = [(-q["votes"], q["id"]) for q in snap["questions"]]
    assert keys == sorted(keys)
    # Votes equal the distinct upvoters in the log.
    voters: dict[int, set[str]] = {}
    for e in log:
        if e.type == "upvote":
            assert e.user_id not in voters.setdefault(e.payload["question"], set())
            voters[e.payload["question"]].add(e.user_id)
    for q in snap["questions"]:
        assert q["votes"] == len(voters.get(q["id"], ()))


def test_upvote_once_pick_moves_the_previous_to_answered_dismiss_hides() -> None:
    kind = QA()
    state, log = run(
        kind,
        [
            ("ask", "a", {"text": "first?"}),
            ("ask", "b", {"text": "second?"}),
            ("upvote", "c", {"question": 2}),
            ("upvote", "c", {"question": 2}),  # refused: once per user
            ("upvote", "a", {"question": 2}),
            ("pick", "host", {"question": 2}),
            ("pick", "host", {"question": 1}),
            ("ask", "c", {"text": "third?"}),
            ("dismiss", "host", {"question": 7}),
        ],
    )
    assert [e.type for e in log].count("upvote") == 2
    snap = kind.snapshot(state)
    assert snap["picked"]["id"] == 1
    assert [q["id"] for q in snap["answered"]] == [2] and snap["answered"][0]["votes"] == 2
    assert snap["questions"] == [] and snap["openCount"] == 0
    with pytest.raises(Reject, match="dismissed"):
        kind.check(state, Incoming("upvote", "d", {"question": 7}))
    with pytest.raises(Reject, match="no such question"):
        kind.check(state, Incoming("upvote", "d", {"question": 99}))
    with pytest.raises(Reject, match="blank"):
        kind.check(state, Incoming("ask", "d", {"text": "   "}))


@pytest.mark.django_db(transaction=True)
async def test_a_seminar_over_websockets(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="seminar", kind="qa")
    host_token, _ = tokens.issue("host", "seminar", "host")
    host = await connect("seminar", token=host_token)
    alice = await connect("seminar", userId="alice")
    bob = await connect("seminar", userId="bob")
    assert alice.welcome["state"] == {"questions": [], "openCount": 0, "picked": None, "answered": []}
    await alice.send("ask", {"text": "Why actors?"}, id="q1")
    await bob.send("ask", {"text": "Why SQLite?"}, id="q2")
    assert (await alice.recv_type("ack"))["seq"] == 1
    assert (await bob.recv_type("ack"))["seq"] == 2
    await alice.send("upvote", {"question": 2}, id="v1")
    await alice.recv_type("ack")
    await alice.send("upvote", {"question": 2}, id="v2")
    error = await alice.recv_type("error")
    assert (error["reason"], error["detail"]) == ("invalid_message", "upvote: you already upvoted this question")
    await bob.send("pick", {"question": 1}, id="p1")
    assert await bob.recv_type("error") == {"type": "error", "reason": "forbidden", "id": "p1"}
    await host.send("pick", {"question": 2}, id="p2")
    assert (await host.recv_type("ack"))["seq"] == 4
    assert (await alice.recv_type("pick"))["payload"] == {"question": 2}
    late = await connect("seminar", userId="late")
    state = late.welcome["state"]
    assert state["picked"]["id"] == 2 and state["picked"]["votes"] == 1
    assert [q["text"] for q in state["questions"]] == ["Why actors?"]
