"""WebSocket upgrades on real daphne, over raw sockets: a head whole in one
read (rooms.daphne_upgrade's path, with a first frame right behind it), a
head split over several reads (twisted's path), and a bad one (twisted's
400, as before). Every other e2e test's client sends its head in one write,
so they all run the fast path too."""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import orjson
import pytest

from tests.e2e.client import room_name
from tests.e2e.server import HOST, DormServer

pytestmark = pytest.mark.e2e


def head(room: str, user: str, extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        f"GET /ws/{room}?userId={user} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
        + b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def masked_text(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> dict:
    first, second = await asyncio.wait_for(reader.readexactly(2), 5)
    assert first == 0x81, f"not a whole text frame: {first:#x}"
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return orjson.loads(await reader.readexactly(n))


async def open_raw(server: DormServer, chunks: list[bytes]) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, server.port)
    for i, chunk in enumerate(chunks):
        if i:
            await asyncio.sleep(0.05)  # a separate read on the server
        writer.write(chunk)
        await writer.drain()
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return status, reader, writer


@pytest.mark.parametrize("split", [None, 20, -3], ids=["whole", "split-in-the-request-line", "split-before-the-end"])
async def test_an_upgrade_is_answered_whether_its_head_comes_whole_or_in_pieces(server: DormServer, split: int | None) -> None:
    room = room_name("upgrade")
    data = head(room, "u1")
    chunks = [data] if split is None else [data[:split], data[split:]]
    status, reader, writer = await open_raw(server, chunks)
    try:
        assert status.startswith(b"HTTP/1.1 101 "), status
        welcome = await read_frame(reader)
        assert welcome["type"] == "welcome" and welcome["userId"] == "u1", welcome
    finally:
        writer.close()


async def test_a_frame_right_behind_the_head_is_read(server: DormServer) -> None:
    """A client may send its first frame in the same segment as the head."""
    status, reader, writer = await open_raw(server, [head(room_name("pipelined"), "u1") + masked_text('{"type":"ping","payload":{"t":7}}')])
    try:
        assert status.startswith(b"HTTP/1.1 101 "), status
        assert (await read_frame(reader))["type"] == "welcome"
        pong = await read_frame(reader)
        assert pong["type"] == "pong" and pong["payload"] == {"t": 7}, pong
    finally:
        writer.close()


@pytest.mark.parametrize(
    "extra",
    [b"X-Bad: a\x0bb\r\n", b"X-Bad: a\x00b\r\n", b"Bad Name: x\r\n"],
    ids=["daphne-refuses-the-value", "twisted-refuses-the-value", "twisted-refuses-the-name"],
)
async def test_a_bad_upgrade_gets_400_as_before(server: DormServer, extra: bytes) -> None:
    status, _reader, writer = await open_raw(server, [head(room_name("bad"), "u1", extra)])
    writer.close()
    assert status.startswith(b"HTTP/1.1 400 "), status
