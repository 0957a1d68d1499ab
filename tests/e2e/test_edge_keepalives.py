"""Keepalives answered at the edge (``RoomConsumer._answer_at_edge``): real
daphne under Dorm's server class and real uvicorn with Dorm's wraps of its
sans-I/O protocol, a raw client that sees every frame.

A ``ping`` or ``heartbeat`` that arrives while the socket's consumer has
nothing else in hand is answered in the server's read: the same pong, counted as
the same keepalive, with no task woken. Everything else keeps PROTOCOL.md's
answers and order: a ping behind an invalid frame in the same read gets its
pong after that frame's error, and a ping with a bad envelope gets the
consumer's error, not a pong.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.e2e.client import room_name
from tests.e2e.server import start_server
from tests.e2e.test_daphne_pings import RawPeer
from tests.e2e.test_leaks import LEAK_ENV, process_gauges

pytestmark = pytest.mark.e2e

ENV = {**LEAK_ENV, "DORM_HIBERNATE_AFTER_SECONDS": "30"}


async def _welcomed(peer: RawPeer) -> None:
    while (await asyncio.to_thread(peer.next_text, 10))["type"] != "welcome":
        pass


@pytest.mark.parametrize("flavor", ["daphne", "uvicorn"])
async def test_keepalives_are_answered_at_the_edge_and_other_frames_keep_their_answers_and_order(tmp_path: Path, flavor: str) -> None:
    server = start_server(flavor, tmp_path, extra_env=ENV)
    try:
        room = room_name("edge")
        peer = RawPeer(server.port, f"/ws/{room}?userId=edge")
        await _welcomed(peer)
        before = process_gauges(server)["keepalives_at_edge"]

        # The shipped clients' ping, another key order with an id, a heartbeat.
        peer.send(peer.frame(0x1, b'{"type":"ping","payload":{"t":7.25}}'))
        pong = await asyncio.to_thread(peer.next_text, 10)
        assert (pong["type"], pong["payload"]) == ("pong", {"t": 7.25})
        assert abs(pong["ts"] - time.time() * 1000) < 60_000
        peer.send(peer.frame(0x1, b'{"id":"k1","payload":{"t":"abc","rtt":12.5},"type":"ping"}'))
        pong = await asyncio.to_thread(peer.next_text, 10)
        assert (pong["type"], pong["payload"]) == ("pong", {"t": "abc"})
        peer.send(peer.frame(0x1, b'{"type":"heartbeat"}'))
        peer.send(peer.frame(0x1, b'{"type":"ping"}'))
        pong = await asyncio.to_thread(peer.next_text, 10)
        assert (pong["type"], pong["payload"]) == ("pong", {})  # the heartbeat had no reply
        assert process_gauges(server)["keepalives_at_edge"] - before == 4

        # An invalid frame, then a ping, in one read: the error comes first.
        peer.send(peer.frame(0x1, b"not json"), peer.frame(0x1, b'{"type":"ping","payload":{"t":9}}'))
        first = await asyncio.to_thread(peer.next_text, 10)
        second = await asyncio.to_thread(peer.next_text, 10)
        assert (first["type"], first["reason"]) == ("error", "invalid_json")
        assert (second["type"], second["payload"]) == ("pong", {"t": 9})

        # A ping with a bad envelope: the consumer's error, the socket stays.
        peer.send(peer.frame(0x1, b'{"type":"ping","id":5}'))
        error = await asyncio.to_thread(peer.next_text, 10)
        assert (error["type"], error["reason"]) == ("error", "invalid_message")
        assert "id must be a string" in error["detail"]

        # A ping behind a room message in one read: the message reaches the
        # room (its ack), the ping its pong.
        peer.send(
            peer.frame(0x1, b'{"type":"draw","id":"d1","payload":{"x":1,"y":2}}'),
            peer.frame(0x1, b'{"type":"ping","payload":{"t":10}}'),
        )
        replies = [await asyncio.to_thread(peer.next_text, 10) for _ in range(2)]
        assert sorted(r["type"] for r in replies) == ["ack", "pong"], replies
        assert process_gauges(server)["keepalives_at_edge"] - before >= 4
    finally:
        server.stop()
