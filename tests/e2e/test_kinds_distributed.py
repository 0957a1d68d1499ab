"""Room kinds in the distributed mode: two real daphne processes on PostgreSQL
and Redis.

Seat booking: users on different processes race for the same seats.
Whichever process holds the room's lease runs its one actor; the other
forwards its clients' frames there. Exactly one ``book`` per seat wins, the
loser gets ``seat_taken``, and the stored log never books a seat twice.

Yjs: binary y-protocols frames cross processes (forwarded to the owner, and
its answers and broadcasts back over the room bus): clients on both
processes converge.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from pycrdt import (
    Doc,
    Text,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)
from websockets.asyncio.client import connect

from rooms.kinds.yjs import _awareness_entries, _awareness_update

from tests.e2e.client import WsClient, room_name
from tests.e2e.test_distributed import Cluster, _start_cluster, _stop_cluster
from tests.e2e.services import REDIS_TEST_URL, check_redis, fresh_postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    check_redis()
    with fresh_postgres_database() as url:
        c = _start_cluster(Path(tmp_path_factory.mktemp("kinds-cluster")), url, REDIS_TEST_URL)
        try:
            yield c
        finally:
            _stop_cluster(c)


def create_seat_room(c: Cluster, seats: list[str], max_per_user: int) -> str:
    slug = room_name("seats")
    settings = orjson.dumps({"seats": seats, "max_per_user": max_per_user}).decode()
    with psycopg.connect(c.database_url) as conn:
        conn.execute(
            "INSERT INTO rooms_room (slug, kind, private, settings, created_at) VALUES (%s, 'seats', false, %s, now())",
            (slug, settings),
        )
    return slug


def replay_bookings(log: list[tuple[int, str, str, str, Any]]) -> dict[str, str]:
    held: dict[str, str] = {}
    for _seq, type_, user, _cid, payload in log:
        seat = payload["seat"]
        if type_ == "book":
            assert seat not in held, f"seat {seat} double-booked"
            held[seat] = user
        else:
            assert held.pop(seat) == user
    return held


async def test_two_users_on_two_processes_race_for_each_seat_exactly_one_wins(cluster: Cluster) -> None:
    seats = [f"R{i}" for i in range(25)]
    room = create_seat_room(cluster, seats, max_per_user=25)
    a = await WsClient.open(cluster.servers[0].url(room, userId="alice"))
    b = await WsClient.open(cluster.servers[1].url(room, userId="bob"))
    try:
        winners = {}
        for seat in seats:
            await asyncio.gather(a.send("book", {"seat": seat}, id=seat), b.send("book", {"seat": seat}, id=seat))
            ra, rb = await asyncio.gather(a.wait_reply(seat), b.wait_reply(seat))
            assert sorted((ra["type"], rb["type"])) == ["ack", "error"], (seat, ra, rb)
            loser = ra if ra["type"] == "error" else rb
            assert (loser["reason"], loser["code"]) == ("invalid_message", "seat_taken")
            assert loser["detail"] == f"book: seat {seat!r} is already booked"
            winners[seat] = "alice" if ra["type"] == "ack" else "bob"
        log = cluster.log(room)
        assert [row[0] for row in log] == list(range(1, len(seats) + 1))
        assert replay_bookings(log) == winners
        # Both processes took part: the room's owner is one, the other forwarded.
        assert cluster.owner_index(room) in (0, 1)
    finally:
        await a.close()
        await b.close()


async def test_no_double_booking_under_load_across_two_processes(cluster: Cluster) -> None:
    seats = [f"S{i}" for i in range(30)]
    room = create_seat_room(cluster, seats, max_per_user=4)
    clients = [await WsClient.open(cluster.servers[i % 2].url(room, userId=f"u{i}")) for i in range(16)]
    rng = random.Random(11)
    per_client = 25
    try:

        async def hammer(i: int, c: WsClient) -> int:
            ids = [f"{i}-{n}" for n in range(per_client)]
            for message_id in ids:
                type_ = "book" if rng.random() < 0.7 else "release"
                await c.send(type_, {"seat": rng.choice(seats)}, id=message_id)
            replies = [await c.wait_reply(message_id, timeout=30) for message_id in ids]
            assert {r.get("code") for r in replies if r["type"] == "error"} <= {"seat_taken", "seat_limit", "not_yours"}
            return sum(1 for r in replies if r["type"] == "ack")

        acks = sum(await asyncio.gather(*(hammer(i, c) for i, c in enumerate(clients))))
        log = cluster.log(room)
        assert len(log) == acks > 30
        held = replay_bookings(log)
        late = await WsClient.open(cluster.servers[1].url(room, userId="late"))
        assert late.welcome["state"]["booked"] == held
        await late.close()
    finally:
        for c in clients:
            await c.close()


# -- the Yjs document across two processes ----------------------------------------


class YSocket:
    """A pycrdt document synced over one binary WebSocket (what y-websocket does)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.doc = Doc()
        self.text = self.doc.get("body", type=Text)
        self.peers: set[str] = set()

    @classmethod
    async def open(cls, url: str, name: str) -> YSocket:
        ws = await connect(url, proxy=None, open_timeout=10, ping_interval=None, max_size=2**24)
        client = cls(ws)
        step1 = await client.recv()
        assert step1[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1])
        await ws.send(handle_sync_message(step1[1:], client.doc))
        await ws.send(create_sync_message(client.doc))
        await ws.send(create_awareness_message(_awareness_update([(hash(name) & 0xFFFF, 1, orjson.dumps({"user": name}))])))
        # The answer to our step 1: from here on, only broadcasts bring news.
        while (step2 := await client.recv())[:2] != bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2]):
            pass
        handle_sync_message(step2[1:], client.doc)
        return client

    async def recv(self) -> bytes:
        data = await asyncio.wait_for(self.ws.recv(), 10)
        assert isinstance(data, bytes), f"a JSON frame on a binary socket: {data!r}"
        return data

    async def edit(self, index: int, chars: str) -> None:
        updates: list[bytes] = []
        sub = self.doc.observe(lambda event: updates.append(event.update))
        self.text.insert(index, chars)
        self.doc.unobserve(sub)
        for update in updates:
            await self.ws.send(create_update_message(update))

    async def pump_until(self, pred: Any, what: str) -> None:
        """Apply what arrives until ``pred()``."""
        deadline = asyncio.get_running_loop().time() + 15
        while not pred():
            assert asyncio.get_running_loop().time() < deadline, f"{what}: text {str(self.text)!r}"
            message = await self.recv()
            if message[0] == YMessageType.SYNC:
                handle_sync_message(message[1:], self.doc)
            elif message[0] == YMessageType.AWARENESS:
                for _cid, _clock, state in _awareness_entries(read_message(message[1:])):
                    if state != b"null":
                        self.peers.add(orjson.loads(state)["user"])


async def test_a_yjs_document_with_clients_on_both_processes(cluster: Cluster) -> None:
    room = room_name("doc")
    with psycopg.connect(cluster.database_url) as conn:
        conn.execute(
            "INSERT INTO rooms_room (slug, kind, private, settings, created_at) VALUES (%s, 'yjs', false, '{}', now())",
            (room,),
        )
    a = await YSocket.open(cluster.servers[0].url(room, userId="a"), "alice")
    b = await YSocket.open(cluster.servers[1].url(room, userId="b"), "bob")
    try:
        for i in range(10):
            await asyncio.gather(a.edit(0, f"a{i};"), b.edit(0, f"b{i};"))
        await a.pump_until(lambda: str(a.text).count(";") == 20, "alice gets bob's edits")
        await b.pump_until(lambda: str(b.text) == str(a.text), "bob converges with alice")
        # After the sync, each side's edit reaches the other only as a broadcast.
        await a.edit(0, "late-a;")
        await b.pump_until(lambda: str(b.text).startswith("late-a;"), "bob gets alice's edit over the room bus")
        await b.edit(0, "late-b;")
        await a.pump_until(lambda: str(a.text).startswith("late-b;late-a;"), "alice gets bob's edit")
        # Awareness crosses processes too.
        await a.pump_until(lambda: "bob" in a.peers, "alice sees bob's awareness")
        # A third client on either process gets the whole document.
        c = await YSocket.open(cluster.servers[cluster.owner_index(room) ^ 1].url(room, userId="c"), "carol")
        await c.pump_until(lambda: str(c.text) == str(a.text), "a newcomer on the non-owner gets the document")
        await c.ws.close()
    finally:
        await a.ws.close()
        await b.ws.close()
