"""The room runtime end to end: a real server process, real WebSocket clients.

These are the guarantees of ARCHITECTURE.md and PROTOCOL.md sections 2-4 as a
client sees them: fan-out to everyone but the sender, one gapless seq order
for every receiver, the output gate, idempotent retries, resume with
``since``, and hibernation that a client cannot notice.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest

from tests.e2e.client import Connect, WsClient, ack_for, event, of_type, reply_for, room_name
from tests.e2e.server import HIBERNATE_AFTER_SECONDS, DormServer

pytestmark = pytest.mark.e2e


async def test_twenty_clients_see_every_draw_but_their_own(any_server: DormServer, connect: Connect) -> None:
    room = room_name()
    clients = [await connect(any_server, room, f"u{i}") for i in range(20)]
    sent: dict[int, str] = {}  # the draw's "n" -> the user who sent it
    for n in range(50):
        sender = clients[n % 20]
        await sender.send("draw", {"n": n, "x": n, "y": -n}, id=f"d{n}")
        sent[n] = f"u{n % 20}"
    for i, client in enumerate(clients):
        ours = {n for n, user in sent.items() if user == f"u{i}"}
        await client.wait_for(ack_for(f"d{max(ours)}"), timeout=15)
        draws = await client.wait_for(event("draw"), 50 - len(ours), timeout=15)
        seen = [d["payload"]["n"] for d in draws]
        assert sorted(seen) == sorted(set(sent) - ours), f"u{i} saw {seen}"
        assert all(d["userId"] != f"u{i}" for d in draws)
        assert all(isinstance(d["ts"], int) for d in draws)
    # Every draw was stored once, in seq order 1..50.
    assert [row[0] for row in any_server.events(room)] == list(range(1, 51))


async def test_concurrent_senders_every_receiver_sees_one_gapless_order(server: DormServer, connect: Connect) -> None:
    room = room_name()
    senders = [await connect(server, room, f"s{i}") for i in range(5)]
    receivers = [await connect(server, room, f"r{i}") for i in range(3)]
    per_sender = 40

    async def burst(i: int) -> list[int]:
        # Fire without waiting so the commits group; then collect the acks.
        for n in range(per_sender):
            await senders[i].send("draw", {"s": i, "n": n}, id=f"s{i}-{n}")
        acks = await senders[i].wait_for(of_type("ack"), per_sender, timeout=20)
        return [a["seq"] for a in acks]

    acked = await asyncio.gather(*(burst(i) for i in range(5)))
    total = 5 * per_sender
    all_seqs = sorted(s for seqs in acked for s in seqs)
    assert all_seqs == list(range(1, total + 1)), "acks must cover 1..N once each"
    orders = []
    for r in receivers:
        draws = await r.wait_for(event("draw"), total, timeout=20)
        assert [d["seq"] for d in draws] == list(range(1, total + 1)), "gapless, in order, each once"
        orders.append([(d["payload"]["s"], d["payload"]["n"]) for d in draws])
    assert orders[0] == orders[1] == orders[2]
    # Each sender's own messages keep its sending order.
    for i in range(5):
        assert [n for s, n in orders[0] if s == i] == list(range(per_sender))
    # The database holds the same order.
    stored = [(seq, orjson.loads(payload)) for seq, _t, _u, _c, payload, _ts in server.events(room)]
    assert [(p["s"], p["n"]) for _seq, p in stored] == orders[0]
    # A sender sees everyone else's events in the same order too.
    others = await senders[0].wait_for(event("draw"), total - per_sender, timeout=20)
    assert [(d["payload"]["s"], d["payload"]["n"]) for d in others] == [o for o in orders[0] if o[0] != 0]


async def test_ack_comes_after_commit(server: DormServer, connect: Connect) -> None:
    room = room_name()
    writer = await connect(server, room, "w")
    for n in range(20):
        seq = await writer.draw({"n": n})
        # The ack's event is already in the database when the ack arrives.
        rows = server.query(
            "SELECT e.seq FROM rooms_event e JOIN rooms_room r ON r.id = e.room_id WHERE r.slug = ? AND e.seq = ?",
            (room, seq),
        )
        assert rows == [(seq,)]


@pytest.mark.server_errors_expected
async def test_commit_failure_gives_internal_error_and_does_not_consume_the_seq(
    server: DormServer, connect: Connect
) -> None:
    room = room_name()
    writer = await connect(server, room, "w")
    watcher = await connect(server, room, "v")
    assert await writer.draw({"n": 1}) == 1
    # A trigger that makes exactly the marked insert fail inside the commit.
    server.execute(
        "CREATE TRIGGER IF NOT EXISTS dorm_e2e_fail_commit BEFORE INSERT ON rooms_event "
        "WHEN NEW.payload LIKE '%FORCE_COMMIT_FAILURE%' "
        "BEGIN SELECT RAISE(ABORT, 'forced by the end-to-end test'); END"
    )
    try:
        reply = await writer.request("draw", {"tag": "FORCE_COMMIT_FAILURE"}, id="doomed")
        assert reply == {"type": "error", "reason": "internal", "id": "doomed"} or (
            reply["type"] == "error" and reply["reason"] == "internal" and reply["id"] == "doomed"
        )
        # The room goes on, and the failed event's seq is given to the next one.
        assert await writer.draw({"n": 2}) == 2
    finally:
        server.execute("DROP TRIGGER IF EXISTS dorm_e2e_fail_commit")
    seen = await watcher.wait_for(event("draw"), 2)
    assert [(d["seq"], d["payload"]) for d in seen] == [(1, {"n": 1}), (2, {"n": 2})]
    assert not watcher.matching(lambda f: "FORCE_COMMIT_FAILURE" in orjson.dumps(f).decode())
    assert [(r[0], orjson.loads(r[4])) for r in server.events(room)] == [(1, {"n": 1}), (2, {"n": 2})]
    # A retry of the failed message (same id) is a new attempt, not a replayed failure.
    assert await writer.draw({"tag": "retried"}, id="doomed") == 3


async def test_idempotent_retry_across_a_reconnect(server: DormServer, connect: Connect) -> None:
    room = room_name()
    watcher = await connect(server, room, "v")
    first = await connect(server, room, "u1")
    seq = await first.draw({"n": 1}, id="once")
    # The same id again on the same socket: the same seq, nothing new.
    assert await first.draw({"n": 1}, id="once") == seq
    # The client lost its connection before it saw... and retries from a new socket.
    first.abort()
    second = await connect(server, room, "u1")
    assert await second.draw({"n": 1}, id="once") == seq
    # Another user may use the same id: it is a different message.
    other = await connect(server, room, "u2")
    assert await other.draw({"n": 2}, id="once") == seq + 1
    await watcher.wait_for(event("draw"), 2)
    await watcher.expect_quiet(event("draw"), 0.3)
    assert [d["seq"] for d in watcher.events("draw")] == [seq, seq + 1]
    assert len(server.events(room)) == 2


async def test_resume_with_since_during_a_live_stream(any_server: DormServer, connect: Connect) -> None:
    room = room_name()
    writer = await connect(any_server, room, "w")
    total = 300
    stop_at = asyncio.Event()

    async def stream() -> None:
        for n in range(total):
            await writer.send("draw", {"n": n}, id=f"n{n}")
            if n % 10 == 0:
                await asyncio.sleep(0.002)
        stop_at.set()

    reader = await connect(any_server, room, "r")
    task = asyncio.create_task(stream())
    # Read a while, then drop the socket abruptly in the middle of the stream.
    got = await reader.wait_for(event("draw"), 40, timeout=15)
    last = max(d["seq"] for d in got)
    seen_first = [d["seq"] for d in reader.events("draw")]
    reader.abort()
    await asyncio.sleep(0.05)
    resumed = await connect(any_server, room, "r", since=last)
    assert resumed.welcome["resumed"] is True
    await task
    await writer.wait_for(ack_for(f"n{total - 1}"), timeout=20)
    after = await resumed.wait_for(event("draw"), total - last, timeout=20)
    seqs = [d["seq"] for d in after]
    assert seqs == list(range(last + 1, total + 1)), "the replay and the live stream join with no gap or duplicate"
    assert sorted(set(seen_first[: seen_first.index(last) + 1]) | set(seqs)) == list(range(1, total + 1))


async def test_resume_since_edges(server: DormServer, connect: Connect) -> None:
    room = room_name()
    writer = await connect(server, room, "w")
    for n in range(3):
        await writer.draw({"n": n})
    # since = latest: resumed, nothing replayed.
    current = await connect(server, room, "r1", since=3)
    assert current.welcome["resumed"] is True and current.welcome["seq"] == 3
    # since ahead of the room (a room that was reset): full state, client resets.
    ahead = await connect(server, room, "r2", since=99)
    assert ahead.welcome["resumed"] is False and "state" in ahead.welcome
    # since=0 replays everything.
    zero = await connect(server, room, "r3", since=0)
    assert [d["seq"] for d in await zero.wait_for(event("draw"), 3)] == [1, 2, 3]
    await current.expect_quiet(event("draw"), 0.2)
    # A since that is not a non-negative integer closes with 4400.
    for bad in ("-1", "abc", "1.5"):
        client = await connect(server, room, "r4", since=bad, expect_welcome=False)
        assert await client.wait_closed() == 4400


async def test_hibernate_and_wake_in_the_middle_of_a_session(any_server: DormServer, connect: Connect) -> None:
    room = room_name()
    a = await connect(any_server, room, "a")
    b = await connect(any_server, room, "b")
    for n in range(5):
        await a.draw({"id": f"s{n}", "x": n})
    assert (await a.request("erase", {"seq": 2}))["type"] == "ack"
    await b.wait_for(of_type("erase"), 1)
    # Wait until the actor has slept (its run is closed in the database)
    # while both sockets stay open.
    runs = await _wait_for_sleep(any_server, room)
    assert runs[-1][4] == "idle"
    a.assert_open()
    b.assert_open()
    # The next frame wakes the room from snapshot + log: the seq continues
    # and the state is the one before the sleep.
    assert await a.draw({"id": "after", "x": 9}) == 7
    got = await b.recv_until(event("draw"))
    while got["seq"] != 7:
        got = await b.recv_until(event("draw"))
    assert got["payload"] == {"id": "after", "x": 9}
    late = await connect(any_server, room, "c")
    strokes = late.welcome["state"]
    assert orjson.dumps(strokes)  # a JSON snapshot
    live = _live_stroke_seqs(strokes)
    assert live == [1, 3, 4, 5, 7], strokes
    # The wake is a new run; awake time is recorded for the one that slept.
    runs = any_server.actor_runs(room)
    assert len(runs) >= 2 and runs[0][2] is not None and runs[0][3] >= 0


async def test_resume_across_a_hibernation(server: DormServer, connect: Connect) -> None:
    room = room_name()
    writer = await connect(server, room, "w")
    for n in range(4):
        await writer.draw({"n": n})
    await _wait_for_sleep(server, room)
    resumed = await connect(server, room, "r", since=2)
    assert resumed.welcome["resumed"] is True
    assert [d["seq"] for d in await resumed.wait_for(event("draw"), 2)] == [3, 4]


async def test_ephemeral_cursor_is_broadcast_at_once_and_never_stored(server: DormServer, connect: Connect) -> None:
    room = room_name()
    a = await connect(server, room, "a")
    b = await connect(server, room, "b")
    reply = await a.request("cursor", {"x": 1, "y": 2}, id="c1")
    assert reply == {"type": "ack", "id": "c1"}
    got = await b.recv_until(of_type("cursor"))
    assert got["payload"] == {"x": 1, "y": 2} and "seq" not in got and got["userId"] == "a"
    assert server.events(room) == []


async def test_join_and_leave_are_announced(server: DormServer, connect: Connect) -> None:
    room = room_name()
    a = await connect(server, room, "a")
    b = await connect(server, room, "b")
    joined = await a.recv_until(of_type("user_joined"))
    assert joined["userId"] == "b" and joined["connectionId"] == b.welcome["connectionId"]
    await b.close()
    left = await a.recv_until(of_type("user_left"))
    assert left["userId"] == "b" and left["code"] == 1000


async def _wait_for_sleep(server: DormServer, room: str) -> list[tuple[str, str, str | None, int, str]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HIBERNATE_AFTER_SECONDS + 10
    while loop.time() < deadline:
        runs = server.actor_runs(room)
        if runs and runs[-1][2] is not None:
            return runs
        await asyncio.sleep(0.1)
    raise AssertionError(f"room {room} did not hibernate; runs: {server.actor_runs(room)}")


def _live_stroke_seqs(state: object) -> list[int]:
    """The seqs of the live strokes in a whiteboard snapshot."""
    strokes = state["strokes"] if isinstance(state, dict) and "strokes" in state else state
    assert isinstance(strokes, list), state
    return sorted(int(s["seq"]) for s in strokes)


__all__ = ["reply_for"]


async def test_sigterm_closes_sockets_with_1001_after_committing(tmp_path: Path) -> None:
    from tests.e2e.server import start_server

    own = start_server("daphne", tmp_path)
    try:
        room = room_name()
        a = await WsClient.open(own.url(room, userId="a"))
        for n in range(3):
            await a.draw({"n": n})
        own.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert await a.wait_closed() == 1001
        assert a.frames[-1] == {"type": "close", "code": 1001, "reason": "server shutting down, reconnect with since"}
        assert own.process.wait(20) is not None  # type: ignore[union-attr]
        runs = own.actor_runs(room)
        assert runs[-1][4] == "shutdown" and runs[-1][2] is not None
        assert [s[0] for s in own.snapshots(room)] == [3], "the state is snapshotted on the way out"
    finally:
        own.stop()
