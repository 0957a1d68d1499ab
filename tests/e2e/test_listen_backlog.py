"""The accept queue of daphne's listening socket (``rooms.daphne_server.
with_listen_backlog``): a burst of clients arriving while the server is busy
waits in the kernel's queue instead of having its SYNs dropped (each such
client retries a second later). With twisted's default of 50, a burst of
100 connecting at once did that (docs/performance.md, "Sixteenth round")."""

from __future__ import annotations

import base64
import os
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import HOST, DormServer, free_port, start_server

pytestmark = pytest.mark.e2e

BURST = 300


def connected_while_stopped(server: DormServer, port: int, n: int) -> tuple[list[socket.socket], int]:
    """Stop the server (it accepts nothing), start ``n`` connections to
    ``port``, and count those whose handshake the kernel completed: each one
    sits in the accept queue, the rest had their SYN dropped."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((HOST, port))
            socks.append(s)
        time.sleep(0.5)  # handshakes on loopback take microseconds; a dropped SYN retries after 1 s
        with selectors.DefaultSelector() as sel:
            for s in socks:
                sel.register(s, selectors.EVENT_WRITE)
            ready = {key.fileobj for key, _ in sel.select(0)}
        connected = sum(1 for s in ready if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
    finally:
        server.process.send_signal(signal.SIGCONT)
    return socks, connected


def upgrade(sock: socket.socket, i: int) -> None:
    sock.setblocking(True)
    sock.settimeout(10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/backlog-{i % 10}?userId=u{i} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    status = sock.recv(64)
    assert status.startswith(b"HTTP/1.1 101"), status


@pytest.fixture
def extra_port() -> int:
    return free_port()


@pytest.fixture
def server(tmp_path: Path, extra_port: int) -> Iterator[DormServer]:
    # -p's endpoint gets Dorm's backlog; the -e endpoint names its own, 20.
    s = start_server("daphne", tmp_path, extra_args=["-e", f"tcp:port={extra_port}:interface={HOST}:backlog=20"])
    try:
        yield s
    finally:
        s.stop()


def test_a_burst_while_the_server_is_busy_waits_in_the_accept_queue(server: DormServer) -> None:
    socks, connected = connected_while_stopped(server, server.port, BURST)
    try:
        assert connected == BURST, f"only {connected} of {BURST} handshakes completed: SYNs dropped by a full accept queue"
        for i, s in enumerate(socks):  # and the server, running again, upgrades every one of them
            upgrade(s, i)
    finally:
        for s in socks:
            s.close()


def test_an_endpoint_that_names_its_backlog_keeps_it(server: DormServer, extra_port: int) -> None:
    socks, connected = connected_while_stopped(server, extra_port, 60)
    try:
        # Linux queues backlog + 1: the same measurement sees the queue's size.
        assert connected == 21, f"{connected} handshakes completed with backlog=20"
    finally:
        for s in socks:
            s.close()
