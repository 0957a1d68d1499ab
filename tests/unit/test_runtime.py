"""The room runtime driven in-process with Channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from rooms.conf import dorm_settings
from rooms.models import ActorRun, Event, Room, Snapshot
from rooms.runtime import persistence

pytestmark = pytest.mark.django_db(transaction=True)


def dorm(**overrides: Any) -> Any:
    from django.conf import settings

    return override_settings(DORM={**settings.DORM, **overrides})


@database_sync_to_async
def log_of(room: str) -> list[tuple[int, str, str, str]]:
    return list(Event.objects.filter(room__slug=room).order_by("seq").values_list("seq", "type", "user_id", "client_id"))


async def test_welcome_then_broadcast_to_others_and_ack_to_sender(connect: Any) -> None:
    a = await connect("r1", userId="a")
    assert a.welcome["seq"] == 0 and a.welcome["resumed"] is False
    assert a.welcome["state"] == {"strokes": []}
    b = await connect("r1", userId="b")
    joined = await a.recv_type("user_joined")
    assert joined["userId"] == "b" and joined["connectionId"] == b.welcome["connectionId"]

    await a.send("draw", {"x": 1, "y": 2}, id="m1")
    assert await a.recv_type("ack") == {"type": "ack", "id": "m1", "seq": 1}
    event = await b.recv_type("draw")
    assert event["seq"] == 1 and event["userId"] == "a" and event["payload"] == {"x": 1, "y": 2}
    assert isinstance(event["ts"], int)
    assert await a.nothing()  # the sender gets no copy of its own broadcast
    assert await log_of("r1") == [(1, "draw", "a", "m1")]


async def test_ephemeral_cursor_is_broadcast_acked_without_seq_and_not_stored(connect: Any) -> None:
    a = await connect("eph", userId="a")
    b = await connect("eph", userId="b")
    await a.send("cursor", {"x": 3}, id="c1")
    assert await a.recv_type("ack") == {"type": "ack", "id": "c1"}
    cursor = await b.recv_type("cursor")
    assert "seq" not in cursor and cursor["payload"] == {"x": 3}
    assert await log_of("eph") == []


async def test_duplicate_id_is_applied_once_and_acked_with_the_same_seq(connect: Any) -> None:
    a = await connect("dup", userId="a")
    b = await connect("dup", userId="b")
    # Back to back: the retry arrives while the original may still be staged.
    await a.send("draw", {"x": 1}, id="same")
    await a.send("draw", {"x": 1}, id="same")
    first = await a.recv_type("ack")
    second = await a.recv_type("ack")
    assert first == second == {"type": "ack", "id": "same", "seq": 1}
    await b.recv_type("draw")
    assert await b.nothing()
    # Another user may use the same id: ids are per user.
    await b.send("draw", {"x": 2}, id="same")
    assert (await b.recv_type("ack"))["seq"] == 2
    assert [row[0] for row in await log_of("dup")] == [1, 2]


async def test_commit_failure_errors_the_sender_only_and_does_not_consume_seq(
    connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await connect("gate", userId="a")
    b = await connect("gate", userId="b")
    await a.send("draw", {"x": 1}, id="ok1")
    assert (await a.recv_type("ack"))["seq"] == 1
    await b.recv_type("draw")

    real_commit = persistence.commit_batch

    def failing_commit(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(persistence, "commit_batch", failing_commit)
    from rooms.runtime import actor as actor_module

    monkeypatch.setattr(actor_module, "db_commit_batch", database_sync_to_async(failing_commit))
    await a.send("draw", {"x": 2}, id="bad")
    assert await a.recv_type("error") == {"type": "error", "reason": "internal", "id": "bad"}
    assert await b.nothing(0.3)

    monkeypatch.setattr(actor_module, "db_commit_batch", database_sync_to_async(real_commit))
    # The failed id is not remembered: the client's retry is applied now.
    await a.send("draw", {"x": 2}, id="bad")
    assert (await a.recv_type("ack"))["seq"] == 2
    assert (await b.recv_type("draw"))["seq"] == 2
    c = await connect("gate", userId="c")
    assert [s["payload"] for s in c.welcome["state"]["strokes"]] == [{"x": 1}, {"x": 2}]


async def test_resume_replays_exactly_the_missed_events(connect: Any) -> None:
    a = await connect("resume", userId="a")
    for i in range(5):
        await a.send("draw", {"i": i}, id=f"d{i}")
        await a.recv_type("ack")
    b = await connect("resume", userId="b", since=2)
    assert b.welcome["resumed"] is True and b.welcome["seq"] == 5 and "state" not in b.welcome
    assert [(await b.recv_type("draw"))["seq"] for _ in range(3)] == [3, 4, 5]
    await a.send("draw", {"i": 5}, id="d5")
    assert (await b.recv_type("draw"))["seq"] == 6


async def test_resume_from_the_database_when_recent_frames_do_not_cover_it(connect: Any) -> None:
    with dorm(RECENT_FRAMES_KEPT=2):
        a = await connect("resume-db", userId="a")
        for i in range(6):
            await a.send("draw", {"i": i}, id=f"d{i}")
            await a.recv_type("ack")
        b = await connect("resume-db", userId="b", since=1)
        assert b.welcome["resumed"] is True
        assert [(await b.recv_type("draw"))["payload"]["i"] for _ in range(5)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("since", ["99", "abc", "-1", "1.5"])
async def test_since_out_of_range_resets_and_malformed_since_is_refused(connect: Any, since: str) -> None:
    a = await connect("since", userId="a")
    await a.send("draw", {"x": 1}, id="d")
    await a.recv_type("ack")
    if since == "99":
        b = await connect("since", userId="b", since=since)
        assert b.welcome["resumed"] is False and b.welcome["state"]["strokes"][0]["payload"] == {"x": 1}
        return
    b = await connect("since", userId="b", since=since, expect_welcome=False)
    assert await b.recv() == {"type": "close", "code": 4400, "reason": "since must be a non-negative integer"}
    assert (await b.ws.receive_output(1))["code"] == 4400


async def test_events_before_welcome_wait_for_it(runtime: Any, connect: Any) -> None:
    """A join queued behind frames sees them in its state, never before welcome."""
    a = await connect("order", userId="a")
    for i in range(20):
        await a.send("draw", {"i": i})
    b = await connect("order", userId="b")  # first frame read must be welcome
    seen = b.welcome["seq"]
    assert len(b.welcome["state"]["strokes"]) == seen
    later = [f["seq"] for f in [await b.recv_type("draw") for _ in range(20 - seen)]]
    assert later == list(range(seen + 1, 21))


async def test_hibernation_keeps_connections_and_wakes_exactly_where_it_slept(runtime: Any, connect: Any) -> None:
    with dorm(HIBERNATE_AFTER_SECONDS=0.2):
        a = await connect("sleepy", userId="a")
        b = await connect("sleepy", userId="b")
        await a.send("draw", {"x": 1}, id="before")
        assert (await a.recv_type("ack"))["seq"] == 1
        await b.recv_type("draw")
        for _ in range(50):
            await asyncio.sleep(0.05)
            if "sleepy" not in runtime.registry.actors:
                break
        assert "sleepy" not in runtime.registry.actors
        await asyncio.sleep(0.1)
        run = await database_sync_to_async(lambda: ActorRun.objects.get(room__slug="sleepy"))()
        assert run.slept_at is not None and run.sleep_reason == "idle" and run.awake_ms >= 200
        assert await database_sync_to_async(Snapshot.objects.filter(room__slug="sleepy", seq=1).exists)()

        await a.send("draw", {"x": 1}, id="before")  # a retry from before the sleep
        assert (await a.recv_type("ack"))["seq"] == 1
        await a.send("draw", {"x": 2}, id="after")
        assert (await a.recv_type("ack"))["seq"] == 2
        assert (await b.recv_type("draw"))["seq"] == 2
        await a.send("undo", id="u")
        assert (await a.recv_type("ack"))["seq"] == 3
        c = await connect("sleepy", userId="c")
        assert [s["payload"] for s in c.welcome["state"]["strokes"]] == [{"x": 1}]


async def test_a_sleeping_rooms_actor_is_freed_without_the_cyclic_collector(runtime: Any, connect: Any) -> None:
    """Its context and its timers referred back to it: reference cycles that
    kept every slept room's state and objects until the collector's next pass
    over the oldest generation (an idle server makes few). Now it goes when
    it sleeps, with a timer that was still armed."""
    import gc
    import weakref

    with dorm(HIBERNATE_AFTER_SECONDS=0.2):
        a = await connect("freed", userId="a")
        await a.send("draw", {"x": 1}, id="d")
        assert (await a.recv_type("ack"))["seq"] == 1
        actor = runtime.registry.actors["freed"]
        actor.context.after(30, lambda ctx: None)  # armed when it sleeps
        gone = weakref.ref(actor)
        del actor
        await a.close()
        gc.disable()
        try:
            for _ in range(60):
                await asyncio.sleep(0.05)
                if gone() is None:
                    break
            assert "freed" not in runtime.registry.actors
            assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
        finally:
            gc.enable()


async def test_an_awake_room_lets_go_of_the_connections_that_left(runtime: Any, connect: Any) -> None:
    """The actor's loop kept its last batch while it waited for the next: a
    room whose last batch was its members leaving held each one's closed
    connection (and through it the server's protocol) for as long as it
    stayed awake with nothing to do."""
    import gc

    from rooms.runtime.connection import Connection

    def alive() -> int:  # Connection has slots and no weak references: count the tracked ones
        return sum(1 for o in gc.get_objects() if type(o) is Connection and o.room == "letgo")

    clients = [await connect("letgo", userId=user) for user in "abc"]
    assert alive() == 3
    gc.disable()  # freed by reference count, as they must be under a frozen collector
    try:
        for client in clients:
            await client.close()
        for _ in range(60):
            await asyncio.sleep(0.05)
            if not alive():
                break
        assert "letgo" in runtime.registry.actors  # still awake: nothing else let them go
        assert alive() == 0
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("nope", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('{"type": "draw", "payload": {"x": NaN}}', "invalid_json"),
        ('{"type": "draw", "payload": {"x": Infinity}}', "invalid_json"),
        ('{"type": "draw", "payload": {"x": 1e300}}', "invalid_message"),
        ('{"type": "draw", "payload": {"x": 1000001}}', "invalid_message"),
        ('{"type": "draw", "payload": [1]}', "invalid_message"),
        ('{"payload": {}}', "invalid_message"),
        ('{"type": "Draw"}', "invalid_message"),
        ('{"type": "draw", "id": 5}', "invalid_message"),
        ('{"type": "draw", "id": "' + "x" * 65 + '"}', "invalid_message"),
        ('{"type": "nosuch"}', "unknown_type"),
        ('{"type": "erase", "payload": {"seq": 999}}', "invalid_message"),
        ('{"type": "undo"}', "invalid_message"),
        ('{"type": "draw", "payload": {"s": "' + "x" * 70000 + '"}}', "too_large"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays_usable(connect: Any, raw: str, reason: str) -> None:
    a = await connect("bad", userId="a")
    await a.send_raw(raw)
    assert (await a.recv_type("error"))["reason"] == reason
    await a.send("draw", {"x": 1}, id="fine")
    assert (await a.recv_type("ack"))["seq"] == 1
    assert await log_of("bad") == [(1, "draw", "a", "fine")]


async def test_frame_over_the_hard_limit_closes_with_1009(connect: Any) -> None:
    a = await connect("huge", userId="a")
    await a.send_raw('{"type":"draw","payload":"' + "x" * (1024 * 1024 + 10) + '"}')
    assert (await a.recv())["code"] == 1009
    assert (await a.ws.receive_output(1))["code"] == 1009


async def test_repeated_abuse_closes_with_1008(connect: Any) -> None:
    a = await connect("abuse", userId="a")
    for _ in range(101):
        await a.send_raw("x")
    frames = [await a.recv() for _ in range(102)]
    assert frames[-1] == {"type": "close", "code": 1008, "reason": "too many invalid frames"}
    assert (await a.ws.receive_output(1))["code"] == 1008


async def test_ping_is_answered_by_pong_to_the_sender_only(connect: Any) -> None:
    a = await connect("ping", userId="a")
    b = await connect("ping", userId="b")
    await a.send("ping", {"t": 123})
    pong = await a.recv_type("pong")
    assert pong["payload"] == {"t": 123} and isinstance(pong["ts"], int)
    assert await b.nothing()


async def test_user_left_only_when_the_last_connection_of_a_user_closes(connect: Any) -> None:
    a = await connect("devices", userId="a")
    phone = await connect("devices", userId="b")
    laptop = await connect("devices", userId="b")
    assert (await a.recv_type("user_joined"))["userId"] == "b"
    assert await a.nothing()  # the second device of b is not a new user
    await phone.close()
    assert await a.nothing(0.3)
    await laptop.close()
    left = await a.recv_type("user_left")
    assert left["userId"] == "b"


@pytest.mark.parametrize(
    ("query", "code"),
    [({}, 4400), ({"token": "abc"}, 4401), ({"userId": "a\x01"}, 4400)],
)
async def test_refusals_send_a_close_frame_then_close(connect: Any, query: dict[str, str], code: int) -> None:
    client = await connect("refuse", expect_welcome=False, **query)
    frame = await client.recv()
    assert frame["type"] == "close" and frame["code"] == code and frame["reason"]
    assert (await client.ws.receive_output(1))["code"] == code


async def test_unknown_room_is_refused_with_4404_when_auto_creation_is_off(connect: Any) -> None:
    with dorm(AUTO_CREATE_ROOMS=False):
        client = await connect("ghost", userId="a", expect_welcome=False)
        assert (await client.recv())["code"] == 4404
        await database_sync_to_async(Room.objects.create)(slug="real", kind="chat")
        chat = await connect("real", userId="a")
        assert chat.welcome["kind"] == "chat" and chat.welcome["state"] == {"messages": []}


async def test_a_failed_start_refuses_then_the_next_join_retries(connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rooms.runtime import actor as actor_module

    real_load = actor_module.db_wake_room
    calls = {"n": 0}

    async def flaky_load(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("database unreachable")
        return await real_load(*args, **kwargs)

    monkeypatch.setattr(actor_module, "db_wake_room", flaky_load)
    first = await connect("flaky", userId="a", expect_welcome=False)
    assert (await first.recv())["code"] == 1013
    second = await connect("flaky", userId="a")
    assert second.welcome["seq"] == 0


async def test_a_start_that_fails_after_its_run_began_ends_the_run(connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wake records its ActorRun with the room's load (one database
    call); if the start fails after that (the presence backend unreachable),
    the run is ended, not left open as if its process had died."""
    from presence.roster import Roster

    real_load = Roster.load
    calls = {"n": 0}

    async def flaky_roster(self: Roster, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("presence unreachable")
        await real_load(self, *args)

    monkeypatch.setattr(Roster, "load", flaky_roster)
    first = await connect("flaky-roster", userId="a", expect_welcome=False)
    assert (await first.recv())["code"] == 1013
    runs = await database_sync_to_async(
        lambda: list(ActorRun.objects.filter(room__slug="flaky-roster").values_list("slept_at", "sleep_reason"))
    )()
    assert len(runs) == 1 and runs[0][0] is not None and runs[0][1] == "error", runs
    second = await connect("flaky-roster", userId="a")
    assert second.welcome["seq"] == 0


# Bursts past the per-user message limit on purpose: the limit is tested in
# tests/unit/test_limits.py.
@dorm(MESSAGE_RATE_PER_SECOND=0)
async def test_chat_messages_fold_into_the_last_fifty(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="chat1", kind="chat")
    a = await connect("chat1", userId="a")
    await a.send("message", {"text": ""}, id="empty")
    assert (await a.recv_type("error"))["reason"] == "invalid_message"
    for i in range(55):
        await a.send("message", {"text": f"hi {i}"})
    await a.send("typing", {"on": True}, id="t")
    await a.recv_type("ack")
    b = await connect("chat1", userId="b")
    texts = [m["text"] for m in b.welcome["state"]["messages"]]
    assert texts == [f"hi {i}" for i in range(5, 55)]


# Bursts past the per-user message limit on purpose: the limit is tested in
# tests/unit/test_limits.py.
@dorm(MESSAGE_RATE_PER_SECOND=0)
async def test_group_commit_shares_transactions_under_load(connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rooms.runtime import actor as actor_module

    batches: list[int] = []
    real = persistence.commit_batch

    def counting(room_id: int, rows: list[Any], writes: dict[str, Any], alarm_writes: Any = ()) -> None:
        batches.append(len(rows))
        real(room_id, rows, writes, alarm_writes)

    monkeypatch.setattr(actor_module, "db_commit_batch", database_sync_to_async(counting))
    a = await connect("group", userId="a")
    for i in range(200):
        await a.send("draw", {"i": i}, id=f"g{i}")
    acks = [await a.recv_type("ack") for _ in range(200)]
    assert [x["seq"] for x in acks] == list(range(1, 201))
    assert sum(batches) == 200 and len(batches) < 200  # several frames per transaction


async def test_settings_reload_on_override() -> None:
    with dorm(HIBERNATE_AFTER_SECONDS=7):
        assert dorm_settings.HIBERNATE_AFTER_SECONDS == 7
    assert dorm_settings.HIBERNATE_AFTER_SECONDS != 7


async def test_a_crashed_actor_errors_its_staged_events_and_never_snapshots_them(
    runtime: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rooms.runtime.actor import RoomActor

    a = await connect("crash", userId="a")
    await a.send("draw", {"x": 1}, id="ok")
    assert (await a.recv_type("ack"))["seq"] == 1

    async def crash_on_flush(self: Any) -> None:
        if self._staged:
            raise RuntimeError("simulated bug inside the actor loop")

    # The crash comes after a draw was staged (folded, not committed): its
    # sender hears `internal`, and the folded state is not stored.
    monkeypatch.setattr(RoomActor, "_flush", crash_on_flush)
    await a.send("draw", {"x": 2}, id="lost")
    assert await a.recv_type("error") == {"type": "error", "reason": "internal", "id": "lost"}
    monkeypatch.undo()
    await a.send("draw", {"x": 3}, id="next")
    assert (await a.recv_type("ack"))["seq"] == 2
    snapshots = await database_sync_to_async(
        lambda: list(Snapshot.objects.filter(room__slug="crash").values_list("seq", flat=True))
    )()
    assert 2 not in snapshots
    b = await connect("crash", userId="b")
    assert [s["payload"] for s in b.welcome["state"]["strokes"]] == [{"x": 1}, {"x": 3}]
