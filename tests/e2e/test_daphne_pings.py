"""daphne's pings under Dorm's server class (rooms.daphne_server, which
checks each socket when its ping is due instead of sweeping all of them, and
sends its own empty pings, ``LeanFrames``): a client that stops answering is
cut within interval + 2 s sweep + timeout, one that answers (a pong, or any
frame) stays, with real daphne and real sockets."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.client import WsClient, event, room_name
from tests.e2e.server import start_server
from tests.e2e.test_backpressure import NonReader

pytestmark = pytest.mark.e2e

# An interval longer than the sweep: the first check after the connect finds
# the ping not yet due, so the ping comes from a rescheduled check.
PING_INTERVAL, PING_TIMEOUT, SWEEP = 3, 1, 2


async def test_a_client_that_stops_answering_pings_is_cut_and_one_that_answers_stays(tmp_path: Path) -> None:
    server = start_server(
        "daphne", tmp_path, extra_args=["--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT)]
    )
    try:
        room = room_name("pings")
        answering = await WsClient.open(server.url(room, userId="answering"))  # its library answers pings
        silent = NonReader(server.port, f"/ws/{room}?userId=silent")  # reads, never answers
        opened = time.monotonic()
        ended = await asyncio.to_thread(silent.connection_ended, 20)
        took = time.monotonic() - opened
        assert ended, "a client that never answers pings was not cut within 20 s"
        # Its first ping goes out in the first sweep past the interval; the
        # timeout runs from there. 2 s of slack for a loaded machine.
        assert took < PING_INTERVAL + SWEEP + PING_TIMEOUT + 2, f"cut after {took:.1f} s"
        # The answering client was pinged all along and is still served.
        await asyncio.sleep(PING_INTERVAL + SWEEP + PING_TIMEOUT)
        answering.assert_open()
        other = await WsClient.open(server.url(room, userId="other"))
        await other.draw({"x": 1})
        await answering.wait_for(event("draw"))
        await other.close()
        await answering.close()
    finally:
        server.stop()


class RawPeer(NonReader):
    """A client that sees every frame, control frames included, and answers
    pings only as a test tells it to."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(port, path)
        self.buf = b""

    def next_frame(self, timeout: float) -> tuple[int, bytes]:
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                n, start = self.buf[1] & 0x7F, 2
                if n == 126:
                    n, start = int.from_bytes(self.buf[2:4], "big"), 4
                if len(self.buf) >= start + n:
                    frame = (self.buf[0] & 0x0F, self.buf[start : start + n])
                    self.buf = self.buf[start + n :]
                    return frame
            if time.monotonic() > deadline:
                raise AssertionError(f"no frame within {timeout} s")
            chunk = self.sock.recv(1 << 16)
            assert chunk, "the server closed the connection"
            self.buf += chunk

    def next_text(self, timeout: float) -> dict[str, Any]:
        """The next text frame (pings on the way are not answered)."""
        while True:
            opcode, payload = self.next_frame(timeout)
            if opcode == 1:
                return orjson.loads(payload)

    def next_ping(self, timeout: float) -> tuple[bytes, float]:
        """Skip to the next ping: its payload and when it arrived."""
        while True:
            opcode, payload = self.next_frame(timeout)
            if opcode == 9:
                return payload, time.monotonic()

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        assert len(payload) < 126
        return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))  # one write: the server reads them together


async def test_a_ping_is_answered_by_a_pong_alone_by_a_pong_with_a_frame_or_by_any_frame(tmp_path: Path) -> None:
    """The server's ping is an empty frame; what answers it: a pong read on its
    own, a pong in the same read as a message (which still reaches the room),
    or a message without any pong. After each answer the socket is still
    served past the timeout, and pinged again an interval later."""
    server = start_server(
        "daphne", tmp_path, extra_args=["--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT)]
    )
    try:
        peer = RawPeer(server.port, f"/ws/{room_name('pinged')}?userId=raw")
        payload, first = await asyncio.to_thread(peer.next_ping, 20)
        assert payload == b""
        peer.send(peer.frame(0xA, b""))  # a pong, alone
        _, second = await asyncio.to_thread(peer.next_ping, 20)
        assert second - first >= PING_INTERVAL - 0.5, "pinged again before the interval"
        peer.send(peer.frame(0xA, b""), peer.frame(0x1, b'{"type":"ping","payload":{"t":7}}'))
        reply = await asyncio.to_thread(peer.next_text, 10)
        assert (reply["type"], reply["payload"]) == ("pong", {"t": 7})
        _, third = await asyncio.to_thread(peer.next_ping, 20)
        peer.send(peer.frame(0x1, b'{"type":"heartbeat"}'))  # no pong: any frame says the client is there
        await asyncio.sleep(PING_TIMEOUT + SWEEP + 1)
        peer.send(peer.frame(0x1, b'{"type":"ping","payload":{"t":8}}'))
        reply = await asyncio.to_thread(peer.next_text, 10)
        assert (reply["type"], reply["payload"]) == ("pong", {"t": 8}), "dropped although it answered"
    finally:
        server.stop()
