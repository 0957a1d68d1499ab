"""The distributed mode: two real daphne processes on the machine's PostgreSQL
and Redis, one writer per room, failover without loss (ARCHITECTURE.md).

The clients here behave as PROTOCOL.md asks of real ones: on a close they
reconnect (to whichever process is up) with ``since`` set to the last seq they
saw, and re-send every message not yet acknowledged, with the same id; an
``error`` reply to a message (``internal``: a commit that failed while Redis
or PostgreSQL was away) is re-sent too, after a short pause.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from rooms.runtime.channel_layer import DormRedisChannelLayer
from tests.e2e.conftest import STARTED
from tests.e2e.client import WsClient, event, of_type, room_name
from tests.e2e.distributed import LEASE_TTL, Cluster, start_cluster
from tests.e2e.server import DormServer, free_port, start_server
from tests.e2e.services import REDIS_TEST_URL, PrivateRedis, check_redis, fresh_postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]


def _start_cluster(
    directory: Path, database_url: str, redis_url: str, n: int = 2, extra: dict[str, str] | None = None
) -> Cluster:
    c = start_cluster(directory, database_url, redis_url, n, extra)
    STARTED.extend(c.servers)  # the per-test log check covers them
    return c


def _stop_cluster(c: Cluster) -> None:
    c.stop()  # the per-test log check reads and then forgets them


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    check_redis()
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = _start_cluster(tmp_path_factory.mktemp("cluster"), database_url, REDIS_TEST_URL)
    try:
        yield c
    finally:
        _stop_cluster(c)


# How long a client waits before re-sending a message refused with an error.
ERROR_RETRY_SECONDS = 0.2


class ResilientClient:
    """A client that survives server deaths the way PROTOCOL.md says to."""

    def __init__(self, servers: list[DormServer], room: str, user: str, prefer: int) -> None:
        self.servers = servers
        self.room = room
        self.user = user
        self.prefer = prefer
        self.ws: WsClient | None = None
        self.seen: dict[int, dict[str, Any]] = {}  # seq -> event (others' and our own acks)
        self.last_seq = 0
        self.unacked: dict[str, dict[str, Any]] = {}  # id -> payload
        self.acked: dict[str, int] = {}
        self.reconnects = 0
        self.close_codes: list[int | None] = []
        self._consumed = 0
        self._since = 0  # what this connection resumed from
        self._seen_here: set[int] = set()  # seqs this connection delivered
        self._top = 0  # the highest seq this connection delivered (or resumed from)
        self.retry_at: dict[str, float] = {}  # id -> when to re-send it (after an error reply)
        self.errors: list[str] = []  # reasons of error replies to our messages

    async def connect(self) -> None:
        last_error: Exception | None = None
        for attempt in range(60):
            alive = [i for i, s in enumerate(self.servers) if s.process is not None and s.process.poll() is None]
            index = self.prefer if self.prefer in alive else alive[attempt % len(alive)]
            query: dict[str, Any] = {"userId": self.user}
            if self.ws is not None:
                query["since"] = self.last_seq
            try:
                ws = await WsClient.open(self.servers[index].url(self.room, **query), timeout=5)
            except Exception as exc:  # refused, 1013 while the room moves, ...
                last_error = exc
                await asyncio.sleep(0.2)
                continue
            self.ws = ws
            self._consumed = 0
            self._since = self.last_seq
            self._seen_here = set()
            welcome = ws.welcome
            self._top = self.last_seq if self.last_seq else int(welcome.get("seq") or 0)
            if self.last_seq and not welcome.get("resumed"):
                raise AssertionError(f"{self.user}: resume refused: {welcome}")
            for message_id, payload in list(self.unacked.items()):
                await ws.send("draw", payload, id=message_id)
            return
        raise AssertionError(f"{self.user}: could not reconnect: {last_error!r}")

    def pump(self) -> None:
        """Take in what the socket received since the last call."""
        assert self.ws is not None
        frames = self.ws.frames[self._consumed :]
        self._consumed += len(frames)
        for f in frames:
            if f.get("type") == "ack" and f.get("id") in self.unacked:
                self.unacked.pop(f["id"])
                self.acked[f["id"]] = f["seq"]
                self._see(f["seq"], {"own": f["id"]})
            elif event("draw")(f):
                self._see(f["seq"], f)
            elif f.get("type") == "error" and f.get("id") in self.unacked:
                # Not applied: retry with the same id (PROTOCOL.md), not at
                # once (the outage that caused it may still be on).
                self.errors.append(str(f.get("reason")))
                self.retry_at[f["id"]] = asyncio.get_running_loop().time() + ERROR_RETRY_SECONDS

    def _see(self, seq: int, frame: dict[str, Any]) -> None:
        # One connection delivers each seq once, and only seqs after the
        # `since` it resumed from. A later connection replays what follows
        # its `since` (the contiguous prefix), so an event seen past a hole
        # (a lost ack of our own) comes again: then it must be the same event.
        # An ack is not a delivery: a retry of our own message is acked with
        # the seq its replay just carried.
        # And that run has no hole: the next new seq is always the one after
        # the connection's top (a hole would be filled only by a later
        # connection's replay, or never if the socket stays open).
        if seq > self._top:
            assert seq == self._top + 1, f"{self.user}: seq {seq} after {self._top} on one connection"
            self._top = seq
        if "own" not in frame:
            assert seq not in self._seen_here, f"{self.user}: seq {seq} twice on one connection"
            assert seq > self._since, f"{self.user}: seq {seq} replayed before since={self._since}"
            self._seen_here.add(seq)
        prior = self.seen.get(seq)
        if prior is not None and "own" not in frame and "own" not in prior:
            assert (prior.get("userId"), prior.get("payload")) == (frame.get("userId"), frame.get("payload")), (
                f"{self.user}: seq {seq} carried two different events"
            )
        self.seen[seq] = frame
        # Only a contiguous prefix counts for `since`.
        while self.last_seq + 1 in self.seen:
            self.last_seq += 1

    async def draw(self, message_id: str, payload: dict[str, Any]) -> None:
        self.unacked[message_id] = payload
        assert self.ws is not None
        try:
            await self.ws.send("draw", payload, id=message_id)
        except Exception:
            pass  # the reconnect re-sends it

    async def keep_alive(self) -> None:
        """Pump frames; on a close, reconnect with since and retry; re-send
        what an error reply refused once its pause is over."""
        assert self.ws is not None
        self.pump()
        if self.ws.closed.is_set():
            self.close_codes.append(self.ws.close_code)
            assert self.ws.close_code != 1011
            self.reconnects += 1
            self.retry_at.clear()  # connect() re-sends every unacked message
            await self.connect()
            return
        now = asyncio.get_running_loop().time()
        for message_id, due in list(self.retry_at.items()):
            if due <= now:
                del self.retry_at[message_id]
                if message_id in self.unacked:
                    await self.draw(message_id, self.unacked[message_id])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def _connect_clients(servers: list[DormServer], room: str, n: int) -> list[ResilientClient]:
    """``n`` clients u0..u{n-1} of ``room``, alternating between the first two servers."""
    clients = []
    for i in range(n):
        rc = ResilientClient(servers, room, f"u{i}", prefer=i % 2)
        await rc.connect()
        clients.append(rc)
    return clients


async def _drive(
    clients: list[ResilientClient],
    senders: list[ResilientClient],
    per_sender: int,
    *,
    during: Any = None,
    until: Any = None,
) -> int:
    """Senders draw ``per_sender`` messages each while everyone keeps alive;
    ``during`` (a coroutine function) runs once a third of the stream is out.
    With ``until`` (a predicate), they keep drawing past ``per_sender`` until
    it holds, so a slow fault (a restart on a loaded machine) still happens
    under traffic. Returns how many messages each sender drew."""
    loop = asyncio.get_running_loop()
    fired = False
    n = 0
    while n < per_sender or (until is not None and not until()):
        for i, s in enumerate(senders):
            await s.draw(f"{s.user}-{n}", {"s": i, "n": n})
        if not fired and during is not None and n >= per_sender // 3:
            fired = True
            await during()
        for c in clients:
            await c.keep_alive()
        await asyncio.sleep(0.01)
        n += 1
    deadline = loop.time() + 40
    while loop.time() < deadline:
        for c in clients:
            await c.keep_alive()
        if all(not s.unacked for s in senders):
            top = max(s.last_seq for s in clients)
            if all(c.last_seq == top for c in clients):
                print({c.user: (c.reconnects, c.close_codes, c.errors) for c in clients})
                return n
        await asyncio.sleep(0.05)
    state = {c.user: (c.last_seq, len(c.unacked), c.reconnects, c.close_codes, c.errors) for c in clients}
    raise AssertionError(f"the stream did not settle: {state}")


def _check_against_log(log: list[tuple[int, str, str, str, Any]], clients: list[ResilientClient], senders: list[ResilientClient]) -> None:
    seqs = [row[0] for row in log]
    assert seqs == list(range(1, len(log) + 1)), "seq has no gap"
    # Every acknowledged message is in the log exactly once, at its acked seq.
    keys = [(row[2], row[3]) for row in log]
    assert len(keys) == len(set(keys)), "no message applied twice"
    by_key = {(row[2], row[3]): row[0] for row in log}
    for s in senders:
        for message_id, seq in s.acked.items():
            assert by_key[(s.user, message_id)] == seq
    # Every client's view equals the log.
    for c in clients:
        assert c.last_seq == len(log), (c.user, c.last_seq, len(log))
        for seq, frame in c.seen.items():
            row = log[seq - 1]
            if "own" in frame:
                assert (row[2], row[3]) == (c.user, frame["own"])
            else:
                assert (frame["userId"], frame["payload"]) == (row[2], row[4])


async def test_one_room_over_two_processes_one_gapless_order(cluster: Cluster) -> None:
    room = room_name("dist")
    clients = await _connect_clients(cluster.servers, room, 10)
    senders = clients[:5]
    await _drive(clients, senders, 30)
    log = cluster.log(room)
    assert len(log) == 150
    _check_against_log(log, clients, senders)
    assert all(c.reconnects == 0 for c in clients)
    orders = [[(f["userId"], f["payload"]["n"]) for _s, f in sorted(c.seen.items()) if "own" not in f] for c in clients[5:]]
    assert all(o == orders[0] for o in orders)
    for c in clients:
        await c.close()


async def test_ephemeral_and_presence_cross_processes(cluster: Cluster) -> None:
    room = room_name("dist")
    a = await WsClient.open(cluster.servers[0].url(room, userId="a"))
    b = await WsClient.open(cluster.servers[1].url(room, userId="b"))
    try:
        assert (await a.recv_until(of_type("user_joined")))["userId"] == "b"
        await b.send("cursor", {"x": 1, "y": 2})
        got = await a.recv_until(of_type("cursor"))
        assert got["userId"] == "b" and "seq" not in got
        # An error for a remote socket travels back to it, not to others.
        reply = await b.request("draw", {"x": 1e300})
        assert reply["type"] == "error" and reply["reason"] == "invalid_message"
        assert not a.matching(of_type("error"))
        await b.close()
        assert (await a.recv_until(of_type("user_left")))["userId"] == "b"
    finally:
        await a.close()
        await b.close()


async def test_owner_killed_mid_stream_nothing_acknowledged_is_lost(database_url: str, tmp_path: Path) -> None:
    c = _start_cluster(tmp_path, database_url, REDIS_TEST_URL)
    try:
        room = room_name("kill")
        clients = await _connect_clients(c.servers, room, 8)
        owner = c.owner_index(room)
        senders = clients[:5]

        async def kill_owner() -> None:
            c.servers[owner].process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            c.servers[owner].process.wait(10)  # type: ignore[union-attr]

        await _drive(clients, senders, 60, during=kill_owner)
        log = c.log(room)
        assert len(log) == 300, "every message was applied once in the end"
        _check_against_log(log, clients, senders)
        assert all(rc.reconnects >= 1 for rc in clients), "every socket was reset"
        assert c.owner_index(room) != owner
        for rc in clients:
            await rc.close()
    finally:
        _stop_cluster(c)


async def test_redis_restart_mid_stream(database_url: str, tmp_path: Path) -> None:
    private = PrivateRedis(tmp_path, free_port())
    private.start()
    c = _start_cluster(tmp_path, database_url, private.url)
    try:
        room = room_name("redis")
        clients = await _connect_clients(c.servers, room, 6)
        senders = clients[:3]

        async def restart_redis() -> None:
            private.stop()
            await asyncio.sleep(0.5)
            private.start()

        await _drive(clients, senders, 60, during=restart_redis)
        log = c.log(room)
        assert len(log) == 180
        _check_against_log(log, clients, senders)
        # The restart wiped the leases: the room was restarted (a new run)
        # and every socket resumed.
        assert len(c.runs(room)) >= 2
        for rc in clients:
            await rc.close()
    finally:
        _stop_cluster(c)
        private.stop()


async def test_redis_restarted_empty_never_lets_two_owners_feed_sockets(database_url: str, tmp_path: Path) -> None:
    """Redis restarted empty wipes every lease while the owner still runs the
    room. The other process's sockets reconnect there (their bus broke), it
    finds the lease free and starts a second actor of the room before the
    first has noticed. The database's unique seq keeps one log; the sockets
    must not see both writers either: every connection still delivers a
    gapless run (ResilientClient checks), and every view equals the log."""
    private = PrivateRedis(tmp_path, free_port())
    private.start()
    # The actors stay awake through the restart (no hibernation in between).
    c = _start_cluster(tmp_path, database_url, private.url, extra={"DORM_HIBERNATE_AFTER_SECONDS": "60"})
    try:
        room = room_name("split")
        clients = [ResilientClient(c.servers, room, f"u{i}", prefer=0 if i < 2 else 1) for i in range(4)]
        for rc in clients:
            await rc.connect()
        assert c.owner_index(room) == 0
        senders = [clients[0], clients[2]]  # one on each process

        async def restart_redis() -> None:
            private.stop()
            await asyncio.sleep(0.5)
            private.start()

        # Long enough after the restart for both processes' senders to keep
        # drawing past the old owner's next lease renewal.
        sent = await _drive(clients, senders, 300, during=restart_redis)
        log = c.log(room)
        assert len(log) == 2 * sent
        _check_against_log(log, clients, senders)
        for rc in clients:
            await rc.close()
    finally:
        _stop_cluster(c)
        private.stop()


async def test_two_processes_racing_for_a_cold_room_end_with_one_owner(cluster: Cluster) -> None:
    for _ in range(5):
        room = room_name("race")
        opened = await asyncio.gather(
            *(WsClient.open(cluster.servers[i % 2].url(room, userId=f"r{i}")) for i in range(6))
        )
        try:
            seqs = await asyncio.gather(*(ws.draw({"i": i}) for i, ws in enumerate(opened)))
            assert sorted(seqs) == list(range(1, 7))
            wakes = sum(s.log_text().count(f"wake room={room} ") for s in cluster.servers)
            assert wakes == 1, f"{wakes} actors started for {room}"
            owner = cluster.owner_index(room)
            assert owner in (0, 1)
        finally:
            for ws in opened:
                await ws.close()


def _inbox_of(server: DormServer) -> str:
    """The process's inbox channel, as its log announced it."""
    found = re.search(r"cluster member up inbox=(\S+)", server.log_text())
    assert found is not None, f"{server.log_path} announces no inbox"
    return found.group(1)


async def test_an_item_bounced_back_to_its_sockets_own_process_is_answered(cluster: Cluster) -> None:
    """A process forwards a socket's frames to the room's owner as it last
    knew it. If the room moved to the socket's own process meanwhile (a
    hand-over: the old owner hibernated or shut down, then this process
    claimed the room), the old owner routes what reaches it on to the new
    owner: back home. There the socket is a local one: its ack must reach
    it (not go out on the bus, which a process never reads back), the event
    everyone else, and the socket's run of seqs stays gapless.

    The first hop (the frame reaching the old owner's inbox) is injected
    here; the old owner's routing and the bounce are the servers' own.
    """
    room = room_name("bounce")
    home = await WsClient.open(cluster.servers[1].url(room, userId="home"))  # process 1 runs the room
    other = await WsClient.open(cluster.servers[0].url(room, userId="other"))  # process 0 follows it
    try:
        assert cluster.owner_index(room) == 1
        first = await home.draw({"n": 1})
        layer = DormRedisChannelLayer(hosts=[cluster.redis_url], capacity=10_000, expiry=30)
        try:
            frame = {
                "type": "dorm.item", "room": room, "c": home.welcome["connectionId"], "u": "home", "sc": "write",
                "k": "frame", "t": "draw", "i": "bounced", "p": orjson.dumps({"n": 2}).decode(),
            }
            await layer.send(_inbox_of(cluster.servers[0]), {"type": "dorm.items", "items": [frame]})
        finally:
            await layer.close_pools()
        ack = await home.wait_reply("bounced", timeout=10)
        assert ack == {"type": "ack", "id": "bounced", "seq": first + 1}, ack
        seen = await other.wait_for(event("draw"), 2)
        assert [(f["seq"], f["userId"], f["payload"]) for f in seen] == [(first, "home", {"n": 1}), (first + 1, "home", {"n": 2})]
        assert not home.events("draw"), "the sender gets an ack, not its own event"
        # The socket goes on from there, with no hole.
        assert await home.draw({"n": 3}) == first + 2
        assert (await other.wait_for(event("draw"), 3))[-1]["seq"] == first + 2
        assert "routing failed" not in cluster.servers[0].log_text()
    finally:
        await home.close()
        await other.close()


async def test_readyz_reports_database_and_redis(cluster: Cluster) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.servers[0].port}/readyz", timeout=5) as response:
        body = orjson.loads(response.read())
    assert response.status == 200 and body["checks"] == {"database": "ok", "redis": "ok"}


async def test_sigterm_hands_rooms_over_and_closes_with_1001(database_url: str, tmp_path: Path) -> None:
    c = _start_cluster(tmp_path, database_url, REDIS_TEST_URL)
    try:
        room = room_name("term")
        a = await WsClient.open(c.servers[0].url(room, userId="a"))
        b = await WsClient.open(c.servers[1].url(room, userId="b"))
        seq = await a.draw({"n": 1})
        owner = c.owner_index(room)
        assert owner == 0
        c.servers[0].process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert await a.wait_closed() == 1001
        assert c.servers[0].process.wait(20) is not None  # type: ignore[union-attr]
        # The socket on the survivor stays; the room moved without a reset.
        b.assert_open()
        assert await b.draw({"n": 2}) == seq + 1
        a2 = await WsClient.open(c.servers[1].url(room, userId="a", since=seq))
        assert a2.welcome["resumed"] is True
        assert [f["seq"] for f in await a2.wait_for(event("draw"), 1)] == [seq + 1]
        assert "shutdown done" in c.servers[0].log_text()
        await a2.close()
        await b.close()
    finally:
        _stop_cluster(c)



async def test_a_frozen_owner_does_not_commit_after_its_lease_moved(database_url: str, tmp_path: Path) -> None:
    """The owner's process is frozen (SIGSTOP: a starved event loop, a long GC
    pause) past its lease; the other process takes the room. When the old
    owner runs again, it must not commit what it had queued: its lease check
    before the commit fails and it lets the room go."""
    # The actor stays awake through the freeze (no hibernation in between).
    c = _start_cluster(tmp_path, database_url, REDIS_TEST_URL, extra={"DORM_HIBERNATE_AFTER_SECONDS": "60"})
    try:
        room = room_name("frozen")
        a = await WsClient.open(c.servers[0].url(room, userId="a"))
        assert await a.draw({"n": 1}) == 1
        assert c.owner_index(room) == 0
        old = c.servers[0].process
        assert old is not None
        old.send_signal(signal.SIGSTOP)
        try:
            await a.send("draw", {"n": "queued while frozen"}, id="frozen")
            await asyncio.sleep(LEASE_TTL + 0.5)  # the lease lapses
            b = await WsClient.open(c.servers[1].url(room, userId="b"))
            assert await b.draw({"n": 2}) == 2, "the other process took the room over"
            assert c.owner_index(room) == 1
        finally:
            old.send_signal(signal.SIGCONT)
        # The old owner wakes up with a queued frame. Whatever it does with it
        # (refuse it, forward it to the new owner, or reset the socket), it
        # never commits it itself: the log does not fork.
        await asyncio.wait_for(a.wait_for(lambda f: f.get("id") == "frozen" or f.get("type") == "close", 1, 15), 16)
        await asyncio.sleep(0.5)
        # Noticed by its lease check, or first by the new owner's events on
        # the room bus (cluster._foreign_event).
        old_log = c.servers[0].log_text()
        assert "lease lost" in old_log or "another owner on the bus" in old_log, "the old owner noticed and let the room go"
        # The client retries on the new owner: the message is applied once.
        a2 = await WsClient.open(c.servers[1].url(room, userId="a", since=2))
        seq = await a2.draw({"n": "queued while frozen"}, id="frozen")
        log = c.log(room)
        assert [row[0] for row in log] == list(range(1, len(log) + 1)) == [1, 2, 3], log
        assert [row[3] for row in log].count("frozen") == 1 and log[seq - 1][3] == "frozen"
        for ws in (a, a2, b):
            await ws.close()
    finally:
        _stop_cluster(c)


async def test_rolling_restart_under_traffic_loses_nothing(database_url: str, tmp_path: Path) -> None:
    """A deploy: every server process is restarted one by one (SIGTERM, then a
    new process) while clients keep sending; nothing acknowledged is lost and
    every client ends with the same view as the log."""
    c = _start_cluster(tmp_path, database_url, REDIS_TEST_URL)
    env = dict(c.servers[0].extra_env)
    try:
        room = room_name("deploy")
        clients = await _connect_clients(c.servers, room, 6)
        senders = clients[:3]
        rolled: list[asyncio.Task[None]] = []

        async def roll() -> None:
            for i in range(len(c.servers)):
                old = c.servers[i]
                await asyncio.to_thread(old.stop)  # SIGTERM: hand over, 1001
                new = await asyncio.to_thread(
                    start_server, "daphne", tmp_path, extra_env=env, migrate=False, name=f"daphne-{i}-new"
                )
                STARTED.append(new)
                c.servers[i] = new  # the clients' list: they reconnect here

        async def start_rolling() -> None:
            rolled.append(asyncio.ensure_future(roll()))

        sent = await _drive(clients, senders, 400, during=start_rolling, until=lambda: bool(rolled) and rolled[0].done())
        rolled[0].result()
        log = c.log(room)
        assert len(log) == sent * len(senders)
        _check_against_log(log, clients, senders)
        assert sum(rc.reconnects for rc in clients) >= len(clients), "every socket moved at least once"
        assert all(code in (1001, None) for rc in clients for code in rc.close_codes), [rc.close_codes for rc in clients]
        for rc in clients:
            await rc.close()
    finally:
        _stop_cluster(c)
