"""Presence: the backends' contract (memory and real Redis), and the room
runtime's presence driven in-process (embedded mode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone as dt_timezone
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings

from presence import queries
from presence.backends.memory import MemoryPresence
from presence.backends.redis import RedisPresence
from presence.models import PresenceSession
from presence.process import PROCESS_ID
from presence.sweep import sweep_stale
from rooms.conf import dorm_settings

pytestmark = pytest.mark.django_db(transaction=True)


def dorm(**overrides: Any) -> Any:
    return override_settings(DORM={**settings.DORM, **overrides})


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryPresence()
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    b = RedisPresence(url, prefix)
    yield b
    await b.close()


# -- the backends' contract ------------------------------------------------------------


async def test_a_user_leaves_only_with_their_last_connection(backend: Any) -> None:
    assert await backend.join("r", "c1", "u", PROCESS_ID) == "joined"
    assert await backend.join("r", "c2", "u", PROCESS_ID) is None
    assert await backend.join("r", "c3", "v", PROCESS_ID) == "joined"
    members = {m["userId"]: m for m in await backend.members("r")}
    assert sorted(c["connectionId"] for c in members["u"]["connections"]) == ["c1", "c2"]
    assert await backend.leave("r", "c1", "u") == ("u", None)
    assert await backend.leave("r", "c2", "u") == ("u", "left")
    assert await backend.leave("r", "c2", "u") is None  # idempotent
    assert [m["userId"] for m in await backend.members("r")] == ["v"]


async def test_status_and_meta_of_the_freshest_connection(backend: Any) -> None:
    await backend.join("r", "c1", "u", PROCESS_ID)
    assert await backend.set_status("r", "c1", "u", "typing", {"device": "phone"})
    [member] = await backend.members("r")
    assert (member["status"], member["meta"]) == ("typing", {"device": "phone"})
    assert await backend.set_status("r", "nope", "u", "idle", None) is False


async def test_silent_connections_stop_counting_after_the_ttl(backend: Any) -> None:
    with dorm(PRESENCE_TTL_SECONDS=0.3):
        await backend.join("r", "c1", "u", "other-process")
        await backend.join("r", "c2", "w", PROCESS_ID)
        await asyncio.sleep(0.2)
        assert await backend.touch("r", "c2", "w")
        await asyncio.sleep(0.2)
        # c1 (never refreshed) is stale: gone from every answer by itself.
        assert [m["userId"] for m in await backend.members("r")] == ["w"]
        assert not await backend.is_online("r", "u")
        assert await backend.online(["u", "w"]) == {"w": ["r"]}
        assert [(s.connection_id, s.process) for s in await backend.stale()] == [("c1", "other-process")]
        # A second socket of a user whose only one went silent: back online.
        assert await backend.join("r", "c3", "u", PROCESS_ID) == "online"
        # The fresh one closes while the silent one stays: offline, not left.
        assert await backend.leave("r", "c3", "u") == ("u", "offline")
        assert await backend.leave("r", "c1", "u") == ("u", "left")


async def test_online_query_for_users_in_several_rooms(backend: Any) -> None:
    await backend.join("r1", "a1", "alice", PROCESS_ID)
    await backend.join("r2", "a2", "alice", PROCESS_ID)
    await backend.join("r2", "b1", "bob", PROCESS_ID)
    await backend.join("r3", "c1", "carol", PROCESS_ID)
    await backend.leave("r3", "c1", "carol")
    assert await backend.online(["alice", "bob", "carol", "dave"]) == {"alice": ["r1", "r2"], "bob": ["r2"]}
    await backend.leave("r1", "a1", "alice")
    assert await backend.online(["alice"]) == {"alice": ["r2"]}


async def test_memory_index_of_one_user_in_many_rooms_is_by_room_and_empties() -> None:
    """One user id in 2,000 rooms (a bot, a shared anonymous id): a lookup
    reads that room's entry of the index, not all 2,000 (the presence sweep
    of 10,000 such rooms was quadratic), and leaving empties it."""
    backend = MemoryPresence()
    for i in range(2000):
        assert await backend.join(f"r{i}", f"c{i}", "bot", PROCESS_ID) == "joined"
    assert backend._users["bot"]["r7"] == {"c7"}
    assert len(backend._users["bot"]) == 2000
    assert await backend.is_online("r7", "bot")
    assert (await backend.online(["bot"]))["bot"][:2] == ["r0", "r1"]
    for i in range(2000):
        assert await backend.leave(f"r{i}", f"c{i}", "bot") == ("bot", "left")
    assert backend._users == {} and backend._rooms == {}


# -- the runtime, in-process ---------------------------------------------------------------


@database_sync_to_async
def ledger(room: str) -> list[PresenceSession]:
    return list(PresenceSession.objects.filter(room=room).order_by("joined_at", "id"))


async def flushed(runtime: Any) -> None:
    await runtime.presence_service.flush_ledger()


async def test_two_connections_of_one_user_and_the_ledger(runtime: Any, connect: Any) -> None:
    a = await connect("devices2", userId="a")
    phone = await connect("devices2", userId="b")
    laptop = await connect("devices2", userId="b")
    assert (await a.recv_type("user_joined"))["userId"] == "b"
    assert [(p["userId"], p["connections"]) for p in laptop.welcome["presence"]] == [("a", 1), ("b", 2)]
    await phone.close()
    assert await a.nothing(0.3)
    await laptop.close()
    assert (await a.recv_type("user_left"))["userId"] == "b"
    assert await a.nothing(0.3)  # once
    await flushed(runtime)
    rows = await ledger("devices2")
    assert [(r.user_id, r.left_at is not None) for r in rows] == [("a", False), ("b", True), ("b", True)]
    assert {r.connection_id for r in rows} == {a.welcome["connectionId"], phone.welcome["connectionId"], laptop.welcome["connectionId"]}
    assert all(r.close_code == 1000 and r.process == PROCESS_ID for r in rows[1:])
    # The address is kept only as a keyed hash.
    assert all(len(r.address_hash) == 32 and "127.0.0.1" not in r.address_hash for r in rows)


async def test_the_ledger_loop_writes_soon_after_a_report_and_sleeps_while_there_is_none(
    runtime: Any, connect: Any, monkeypatch: Any
) -> None:
    service = runtime.presence_service
    writes: list[int] = []
    real_flush = service.flush_ledger

    async def counted() -> None:
        writes.append(len(service.buffer))
        await real_flush()

    monkeypatch.setattr(service, "flush_ledger", counted)
    client = await connect("ledger-loop", userId="a")
    deadline = time.monotonic() + 3
    while not await ledger("ledger-loop") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # written by the loop itself, no flush called here
    assert [r.user_id for r in await ledger("ledger-loop")] == ["a"]
    settled = len(writes)
    await asyncio.sleep(4 * dorm_settings.PRESENCE_LEDGER_FLUSH_SECONDS)
    assert len(writes) == settled, "the loop woke with nothing to write"
    await client.close()
    deadline = time.monotonic() + 3
    while not all(r.left_at for r in await ledger("ledger-loop")) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert all(r.left_at for r in await ledger("ledger-loop"))
    assert all(n > 0 for n in writes)  # every write had something to write


async def test_the_handshake_headers_are_let_go_once_read(runtime: Any) -> None:
    """The user agent reaches the ledger; then the socket holds no headers
    (daphne keeps the same list as its protocol's clean_headers)."""
    from channels.testing import WebsocketCommunicator

    from config.asgi import application

    headers = [(b"user-agent", b"TestAgent/1.0"), (b"x-other", b"1")]
    communicator = WebsocketCommunicator(application, "/ws/headers-released?userId=a", headers=headers)
    communicator.scope["client"] = ("127.0.0.1", 50000)
    connected, _ = await communicator.connect()
    assert connected
    assert orjson.loads(await communicator.receive_from())["type"] == "welcome"
    assert headers == []  # the very list the scope carried
    await runtime.presence_service.flush_ledger()
    assert [r.user_agent for r in await ledger("headers-released")] == ["TestAgent/1.0"]
    await communicator.disconnect()


async def test_a_silent_connection_goes_offline_after_the_ttl_with_no_other_traffic(runtime: Any, connect: Any) -> None:
    with dorm(PRESENCE_TTL_SECONDS=0.6, PRESENCE_SWEEP_SECONDS=0.1):
        a = await connect("silent", userId="a")
        b = await connect("silent", userId="b")
        assert (await a.recv_type("user_joined"))["userId"] == "b"
        started = time.monotonic()
        offline = None
        while time.monotonic() - started < 3:
            await a.send("heartbeat")  # a stays fresh; b says nothing at all
            # (receive_nothing: a timed-out receive would cancel the app)
            if await a.nothing(0.2):
                continue
            offline = await a.recv_type("presence")
            break
        assert offline is not None, "b never went offline"
        elapsed = time.monotonic() - started
        assert offline["userId"] == "b" and offline["payload"] == {"status": "offline"}
        assert 0.5 <= elapsed < 3.0, elapsed
        assert [m["userId"] for m in await runtime.presence.members("silent")] == ["a"]
        # A heartbeat brings b back; a hears it.
        await b.send("heartbeat")
        back = await a.recv_type("presence")
        assert back["userId"] == "b" and back["payload"] == {"status": "online"}
        # Silent again: offline again (the sweep looks only at sockets past
        # the TTL, and b is back among them), while a stays fresh.
        again = None
        while time.monotonic() - started < 6:
            await a.send("heartbeat")
            if await a.nothing(0.2):
                continue
            again = await a.recv_type("presence")
            break
        assert again is not None and again["userId"] == "b" and again["payload"] == {"status": "offline"}
        assert [m["userId"] for m in await runtime.presence.members("silent")] == ["a"]


async def test_who_was_in_the_room_at_t_across_joins_and_leaves(runtime: Any, connect: Any) -> None:
    def now() -> datetime:
        return datetime.now(dt_timezone.utc)

    a = await connect("history", userId="a")
    b = await connect("history", userId="b")
    await a.recv_type("user_joined")
    await asyncio.sleep(0.05)
    t1 = now()
    await asyncio.sleep(0.05)
    await b.close()
    await a.recv_type("user_left")
    await asyncio.sleep(0.05)
    t2 = now()
    await asyncio.sleep(0.05)
    c = await connect("history", userId="c")
    b2 = await connect("history", userId="b")
    await asyncio.sleep(0.05)
    t3 = now()
    await flushed(runtime)
    who = database_sync_to_async(queries.who_was_there)
    assert await who("history", t1) == ["a", "b"]
    assert await who("history", t2) == ["a"]
    assert await who("history", t3) == ["a", "b", "c"]
    await c.close()
    await b2.close()


async def test_the_sweep_closes_sessions_of_a_process_that_stopped_beating(runtime: Any) -> None:
    from presence.ledger import Closed, Opened, address_hash, beat, write_batch

    def setup() -> datetime:
        beat("dead-process", started=True)
        joined = datetime.now(dt_timezone.utc)
        write_batch("dead-process", [Opened("k1", "crash", "u1", joined, "ua", address_hash("10.0.0.1")),
                                     Opened("k2", "crash", "u2", joined, "ua", "")],
                    [Closed("k2", joined, 1000, "")])
        return joined

    await database_sync_to_async(setup)()
    with dorm(PRESENCE_SWEEP_SECONDS=0.1, PRESENCE_PROCESS_DEAD_AFTER_BEATS=3):
        assert (await database_sync_to_async(sweep_stale)())["sessions_closed"] == 0  # still beating
        await asyncio.sleep(1.1)
        counts = await database_sync_to_async(sweep_stale)()
    assert counts["sessions_closed"] == 1 and counts["processes_dead"] == 1
    k1, k2 = await ledger("crash")
    assert k1.close_code == 1006 and "process gone" in k1.close_reason and k1.left_at >= k1.joined_at
    assert (k2.close_code, k2.close_reason) == (1000, "")


async def test_a_join_leave_storm_of_500_connections_is_coalesced(runtime: Any, connect: Any) -> None:
    observer = await connect("storm", userId="observer")
    started = time.monotonic()
    clients = []
    for i in range(500):
        clients.append(await connect("storm", userId=f"s{i}", client=f"10.1.{i // 250}.{i % 250}"))
    for c in clients:
        await c.close()
    duration = time.monotonic() - started
    await asyncio.sleep(0.3)  # the last window's flush
    frames = []
    while not await observer.nothing(0.1):
        frames.append(await observer.recv())
    presence_frames = [f for f in frames if f["type"] in ("user_joined", "user_left", "presence", "presence_diff")]
    # At most one per 100 ms window (plus the leading one and the last flush).
    bound = int(duration / 0.1) + 2
    assert 1 <= len(presence_frames) <= bound, (len(presence_frames), bound, duration)
    # Nothing lost: the net effect is every storm user joined and left.
    joined = {j["userId"] for f in presence_frames if f["type"] == "presence_diff" for j in f["joined"]}
    joined |= {f["userId"] for f in presence_frames if f["type"] == "user_joined"}
    left = {j["userId"] for f in presence_frames if f["type"] == "presence_diff" for j in f["left"]}
    left |= {f["userId"] for f in presence_frames if f["type"] == "user_left"}
    assert joined - left == set()
    assert [m["userId"] for m in await runtime.presence.members("storm")] == ["observer"]
    print(f"storm: 500 joins+leaves in {duration:.2f}s -> {len(presence_frames)} presence frames (bound {bound})")
    await flushed(runtime)
    rows = await ledger("storm")
    assert len(rows) == 501 and sum(r.left_at is not None for r in rows) == 500


def test_the_ledger_in_the_admin_with_filters(admin_client: Any) -> None:
    from presence.ledger import Opened, write_batch

    joined = datetime.now(dt_timezone.utc)
    write_batch("p", [Opened("adm1", "lobby", "alice", joined, "ua", ""), Opened("adm2", "other", "bob", joined, "ua", "")], [])
    url = "/admin/presence/presencesession/"
    page = admin_client.get(url, {"q": "alice"})
    assert page.status_code == 200 and b"adm1" in page.content and b"adm2" not in page.content
    page = admin_client.get(url, {"room": "other", "open": "yes"})
    assert page.status_code == 200 and b"adm2" in page.content and b"adm1" not in page.content
    # The time drill-down (date_hierarchy).
    page = admin_client.get(url, {"joined_at__year": joined.year, "joined_at__month": joined.month})
    assert page.status_code == 200 and b"adm1" in page.content and b"adm2" in page.content
    page = admin_client.get(url, {"joined_at__year": joined.year - 1})
    assert page.status_code == 200 and b"adm1" not in page.content


async def test_the_coalescer_sends_at_most_one_update_per_window() -> None:
    from presence.coalesce import PresenceCoalescer

    sent: list[tuple[float, str]] = []

    class Capture:
        async def broadcast(self, room: str, text: str, seq: int | None, exclude: str | None) -> None:
            sent.append((time.monotonic(), text))

    out = PresenceCoalescer("r", Capture())
    started = time.monotonic()
    for i in range(300):  # joins and leaves for 1.5 s
        if i % 2:
            await out.left(f"u{i - 1}", f"c{i - 1}", 1000, "")
        else:
            await out.joined(f"u{i}", f"c{i}")
        await asyncio.sleep(0.005)
    await out.joined("late", "c-late")
    await asyncio.sleep(0.25)
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:])]
    assert gaps and min(gaps) >= 0.095, gaps
    assert len(sent) <= (time.monotonic() - started) / 0.1 + 1
    # Joined-then-left inside one window cancels out; the last join is sent.
    assert '"late"' in sent[-1][1]



def test_the_sweep_deletes_closed_sessions_past_the_retention() -> None:
    from datetime import timedelta

    from presence.ledger import Closed, Opened, write_batch

    now = datetime.now(dt_timezone.utc)
    old = now - timedelta(days=40)
    write_batch("p", [Opened("old-closed", "r", "u", old, "", ""), Opened("old-open", "r", "u", old, "", ""),
                      Opened("recent", "r", "u", now, "", "")],
                [Closed("old-closed", old + timedelta(hours=1), 1000, ""), Closed("recent", now, 1000, "")])
    with dorm(PRESENCE_LEDGER_RETENTION_DAYS=30):
        assert sweep_stale()["sessions_deleted"] == 1
    kept = set(PresenceSession.objects.values_list("connection_id", flat=True))
    assert kept == {"old-open", "recent"}  # an open session is never deleted


async def test_a_failing_presence_backend_on_heartbeat_keeps_the_socket(runtime: Any, connect: Any, monkeypatch: Any) -> None:
    """Redis restarting under a heartbeat: the socket and its room go on
    (seen by the fault campaign as 1013 closes and ERROR lines)."""
    a = await connect("touchfail", userId="a")
    b = await connect("touchfail", userId="b")
    assert (await a.recv_type("user_joined"))["userId"] == "b"

    async def down(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("presence backend down")

    monkeypatch.setattr(runtime.presence, "touch", down)
    await b.send("heartbeat")
    await b.send("cursor", {"x": 1, "y": 2})
    cursor = await a.recv_type("cursor")
    assert cursor["userId"] == "b"
    await b.send("draw", {"points": [[0, 0], [1, 1]]}, id="d1")
    ack = await b.recv_type("ack")
    assert ack["id"] == "d1" and ack["seq"] >= 1


@pytest.fixture
def no_churn() -> Any:
    """The process's churning rooms start empty (other tests' rooms count
    for a second after their last update)."""
    from presence.coalesce import churning

    churning.clear()
    yield churning
    churning.clear()


async def test_a_big_rooms_window_widens_so_its_updates_reach_at_most_the_fanout_budget(no_churn: Any) -> None:
    """A room's presence updates reach at most PRESENCE_FANOUT_PER_SECOND sockets
    a second: with 400 connections and a budget of 1,000, one update per 0.4 s."""
    from presence.coalesce import PresenceCoalescer

    sent: list[tuple[float, str]] = []

    class Capture:
        async def broadcast(self, room: str, text: str, seq: int | None, exclude: str | None) -> None:
            sent.append((time.monotonic(), text))

    audience = 400
    out = PresenceCoalescer("r", Capture(), lambda: audience)
    with dorm(PRESENCE_FANOUT_PER_SECOND=1000):
        assert out.window() == pytest.approx(0.4)
        started = time.monotonic()
        for i in range(260):  # joins for 1.3 s
            await out.joined(f"u{i}", f"c{i}")
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.45)
        elapsed = time.monotonic() - started
        gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:])]
        assert len(sent) >= 3 and min(gaps) >= 0.395, gaps
        assert len(sent) <= elapsed / 0.4 + 1
        # Nothing lost: every join is in one of the updates.
        joined = set()
        for _, text in sent:
            frame = orjson.loads(text)
            joined |= {j["userId"] for j in frame["joined"]} if frame["type"] == "presence_diff" else {frame["userId"]}
        assert joined == {f"u{i}" for i in range(260)}
        # A small room keeps the base window; a budget of 0 turns the widening off.
        audience = 150
        assert out.window() == pytest.approx(0.15)
        audience = 50
        assert out.window() == pytest.approx(0.1)
    with dorm(PRESENCE_FANOUT_PER_SECOND=0):
        audience = 100_000
        # The process's budget (10,000) still holds, for a room alone too.
        assert out.window() == pytest.approx(10.0)
    with dorm(PRESENCE_FANOUT_PER_SECOND=0, PRESENCE_PROCESS_FANOUT_PER_SECOND=0):
        assert out.window() == pytest.approx(0.1)


async def test_rooms_churning_at_once_share_the_process_budget_and_lose_nothing(no_churn: Any) -> None:
    """A reconnect storm over many rooms: their presence updates together
    reach at most PRESENCE_PROCESS_FANOUT_PER_SECOND sockets a second (the
    same window for each), every join is still announced, and a room alone
    again gets its base window back."""
    from presence.coalesce import PresenceCoalescer

    sends: list[tuple[float, str, int]] = []  # when, room, sockets reached
    announced: dict[str, set[str]] = {}
    audience = 100

    class Capture:
        async def broadcast(self, room: str, text: str, seq: int | None, exclude: str | None) -> None:
            sends.append((time.monotonic(), room, audience))
            frame = orjson.loads(text)
            users = {j["userId"] for j in frame["joined"]} if frame["type"] == "presence_diff" else {frame["userId"]}
            announced.setdefault(room, set()).update(users)

    rooms = [PresenceCoalescer(f"r{i}", Capture(), lambda: audience) for i in range(20)]
    joins = {room.room: set() for room in rooms}
    with dorm(PRESENCE_PROCESS_FANOUT_PER_SECOND=4000, PRESENCE_FANOUT_PER_SECOND=2000):
        assert rooms[0].window() == pytest.approx(0.1)  # one room: 100 / 4,000 = 25 ms, under the base
        started = time.monotonic()
        for step in range(300):  # ~1.5 s: 15 rounds 0.1 s apart, a join into every room in each
            room = rooms[step % 20]
            user = f"u{step}"
            joins[room.room].add(user)
            await room.joined(user, f"c{step}")
            if step % 20 == 19:
                await asyncio.sleep(0.1)
        # 20 rooms of 100 churning: 2,000 connections / 4,000 a second, a 0.5 s window each.
        assert rooms[3].window() == pytest.approx(0.5)
        await asyncio.sleep(0.6)
        elapsed = time.monotonic() - started
        # Each room's first update goes out at once (2,000 sockets); after
        # that the process stays within its budget.
        reached = sum(n for _, _, n in sends)
        assert reached <= 20 * audience + 4000 * elapsed * 1.1, (reached, elapsed)
        for room in rooms:
            times = [at for at, name, _ in sends if name == room.room]
            gaps = [b - a for a, b in zip(times, times[1:])]
            assert len(times) >= 2 and min(gaps) >= 0.3, (room.room, gaps)
        # Without the process budget the same churn sent an update per 0.1 s.
        assert len(sends) <= 20 * (1 + elapsed / 0.3)
    # Nothing lost: every join is in one of its room's updates.
    for room in rooms:
        await room.flush()
    assert announced == joins
    # A room alone again (the others quiet for their window) is back to the base.
    with dorm(PRESENCE_PROCESS_FANOUT_PER_SECOND=4000):
        no_churn.clear()
        assert rooms[0].window() == pytest.approx(0.1)
    with dorm(PRESENCE_PROCESS_FANOUT_PER_SECOND=0):
        assert rooms[0].window() == pytest.approx(0.1)


def test_churning_rooms_count_for_a_second_or_their_window_with_their_audience() -> None:
    from presence.coalesce import ChurningRooms

    churn = ChurningRooms()
    churn.flushed("a", 10.0, 0.1, 100)
    churn.flushed("b", 10.2, 3.0, 5000)
    churn.flushed("a", 10.4, 0.1, 120)  # a again, bigger: moves behind b
    assert churn.audience(10.5, "a", 130) == 5130  # the room about to send counts as it is now
    assert churn.audience(10.5, "c", 50) == 5170
    assert churn.audience(11.3, "b", 5000) == 5120  # a until 11.4, b until 13.2
    assert churn.audience(11.5, "b", 5000) == 5120  # a expired, behind b: the sum errs high, never low
    churn.flushed("c", 11.6, 0.1, 50)
    assert churn.total(11.7) == 5170
    assert churn.audience(13.3, "b", 5000) == 5000  # all expired: only the room about to send
    assert churn.total(13.3) == 0


def test_a_big_room_among_small_ones_gets_the_same_window_not_an_equal_share(no_churn: Any) -> None:
    """One room of 5,000 and 200 of 50 churning together: one window for all,
    their 15,000 connections / the budget (1.5 s), not 100 s for the big one."""
    from presence.coalesce import PresenceCoalescer

    class Quiet:
        async def broadcast(self, room: str, text: str, seq: int | None, exclude: str | None) -> None:
            pass

    now = time.monotonic()
    for i in range(200):
        no_churn.flushed(f"small{i}", now, 1.0, 50)
    big = PresenceCoalescer("big", Quiet(), lambda: 5000)
    small = PresenceCoalescer("small7", Quiet(), lambda: 50)
    with dorm(PRESENCE_PROCESS_FANOUT_PER_SECOND=10000, PRESENCE_FANOUT_PER_SECOND=5000):  # the big room's own: 1 s
        assert big.window() == pytest.approx(1.5)
        no_churn.flushed("big", now, 1.5, 5000)  # it sent its update
        assert small.window() == pytest.approx(1.5)
