"""Backpressure: a client that stops reading never slows its room.

A real server (daphne, and uvicorn for the slow client), one client that stops reading (its TCP window fills,
then the server's transport buffer grows), fast clients next to it: the slow
one is closed with 4408 once its queued bytes pass the bound, ephemeral events
are skipped for it before that, and the fast ones keep their latency.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

import pytest

from tests.e2e.client import WsClient, event, room_name
from tests.e2e.server import start_server

pytestmark = pytest.mark.e2e

MAX_BYTES = 512 * 1024


class NonReader:
    """A WebSocket client that completes the handshake and never reads again
    (a phone in a tunnel): a raw socket with a small receive buffer."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def connection_ended(self, timeout: float) -> bool:
        """Drain what is buffered; True once the server has closed the TCP connection."""
        self.sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(1 << 20):
                    return True
            except socket.timeout:
                continue
            except ConnectionResetError:
                return True
        return False

    def read_frames(self, until: Callable[[dict[str, Any]], bool], timeout: float) -> list[dict[str, Any]]:
        """Start reading: the JSON frames received, up to the first matching ``until``."""
        self.sock.settimeout(timeout)
        buf = b""
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 2:
                n = buf[1] & 0x7F
                start = 2
                if n == 126:
                    n, start = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    n, start = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < start + n:
                    break
                opcode, payload, buf = buf[0] & 0x0F, buf[start : start + n], buf[start + n :]
                if opcode == 1:
                    frames.append(orjson.loads(payload))
                    if until(frames[-1]):
                        return frames
        raise AssertionError(f"no final frame within {timeout} s ({len(frames)} frames)")

    def close(self) -> None:
        self.sock.close()


# Both servers: each has its own direct writer, which tells the watch when
# bytes stayed queued (rooms/runtime/direct_write.py).
@pytest.mark.parametrize("flavor", ["daphne", "uvicorn"])
async def test_a_client_that_stops_reading_is_closed_and_the_room_keeps_its_pace(tmp_path: Path, flavor: str) -> None:
    server = start_server(
        flavor,
        tmp_path,
        extra_env={"DORM_OUTBOUND_SOFT_BYTES": str(64 * 1024), "DORM_OUTBOUND_MAX_BYTES": str(MAX_BYTES)},
    )
    try:
        room = room_name("slow")
        writer = await WsClient.open(server.url(room, userId="writer"))
        fast = await WsClient.open(server.url(room, userId="fast"))
        slow = NonReader(server.port, f"/ws/{room}?userId=slow")
        # 9.6 MB per reader: more than the kernel's send buffer (up to 4 MB on
        # loopback) can hide, so the rest queues in the server for the laggard.
        blob = "x" * 12000
        started = time.perf_counter()
        for n in range(800):
            await writer.send("draw", {"n": n, "blob": blob}, id=f"d{n}")
            if n % 20 == 19:
                # Pace the writer on its acks so the room is busy, not flooded.
                await writer.wait_for(lambda f, n=n: f.get("type") == "ack" and f.get("id") == f"d{n}", 1, 15)
        draws = await fast.wait_for(event("draw"), 800, timeout=60)
        elapsed = time.perf_counter() - started
        assert sorted(d["payload"]["n"] for d in draws) == list(range(800)), "the fast client lost nothing"
        assert [d["seq"] for d in draws] == list(range(1, 801))
        # 9.6 MB went out to each reader: without the bound the server would
        # hold all of it for the slow one. It was closed with 4408 instead
        # (and dropped, since it reads nothing, not even its close frame).
        log = server.log_text()
        assert "slow client closed" in log and "code=4408" in log, log[-2000:]
        assert await asyncio.to_thread(slow.connection_ended, 10), "the server let go of the slow socket"
        slow.close()
        # The room kept its pace: no stall waiting for the laggard (generous
        # bound for a loaded CI machine; the benchmark measures latency).
        assert elapsed < 20, elapsed
        acks = [f for f in writer.frames if f.get("type") == "ack"]
        assert len(acks) == 800
        await fast.close()
        await writer.close()
    finally:
        server.stop()


async def test_a_lagging_client_gets_durable_events_but_not_every_cursor(tmp_path: Path) -> None:
    server = start_server(
        "daphne",
        tmp_path,
        extra_env={"DORM_OUTBOUND_SOFT_BYTES": str(16 * 1024), "DORM_OUTBOUND_MAX_BYTES": str(64 * 1024 * 1024)},
    )
    try:
        room = room_name("lag")
        writer = await WsClient.open(server.url(room, userId="writer"))
        lagging = NonReader(server.port, f"/ws/{room}?userId=lagging")
        blob = "y" * 12000
        for n in range(600):
            await writer.send("draw", {"n": n, "blob": blob})
        await writer.draw({"n": "filled"})
        await asyncio.sleep(0.5)  # the watch has seen its queue by now
        for n in range(100):
            await writer.send("cursor", {"x": n, "y": n})
        last = await writer.draw({"n": "last"})
        frames = await asyncio.to_thread(lagging.read_frames, lambda f: f.get("seq") == last, 60)
        got_draws = [f for f in frames if f.get("type") == "draw"]
        got_cursors = [f for f in frames if f.get("type") == "cursor"]
        welcome = frames[0]
        assert welcome["type"] == "welcome"
        # Events ordered before its welcome are in the welcome's state.
        seqs = [d["seq"] for d in got_draws]
        assert seqs == list(range(welcome["seq"] + 1, last + 1)), "every durable event after the welcome, in order"
        assert got_cursors == [], "cursors are skipped while it lags"
        assert "slow client closed" not in server.log_text(), "under the hard bound it stays connected"
        lagging.close()
        await writer.close()
    finally:
        server.stop()

