"""WebSocket upgrades on real daphne, over raw sockets: a head whole in one
read (rooms.daphne_upgrade's path, with a first frame right behind it), a
head split over several reads (twisted's path), a bad one (twisted's 400,
as before), and both over TLS served by daphne itself. Every other e2e test's client sends its head in one write,
so they all run the fast path too."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import struct
from pathlib import Path

import orjson
import pytest

from tests.e2e.client import room_name
from tests.e2e.server import HOST, DormServer, free_port, start_server

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


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


async def test_an_upgrade_over_tls_on_daphne_is_answered_on_either_path(tmp_path: Path) -> None:
    """daphne serving TLS itself: the socket's transport wraps the protocol
    (twisted's TLS), which the fast path hands over as daphne does."""
    key, cert = _self_signed(tmp_path)
    tls_port = free_port()
    server = start_server("daphne", tmp_path, name="daphne-tls",
                          extra_args=["-e", f"ssl:{tls_port}:interface={HOST}:privateKey={key}:certKey={cert}"])
    try:
        context = ssl.create_default_context(cafile=str(cert))
        for split in (None, 20):
            room = room_name("tls")
            data = head(room, "u1")
            reader, writer = await asyncio.open_connection(HOST, tls_port, ssl=context)
            try:
                for i, chunk in enumerate([data] if split is None else [data[:split], data[split:]]):
                    if i:
                        await asyncio.sleep(0.05)
                    writer.write(chunk)
                    await writer.drain()
                status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert status.startswith(b"HTTP/1.1 101 "), status
                writer.write(masked_text('{"type":"ping","payload":{"t":1}}'))
                assert (await read_frame(reader))["type"] == "welcome"
                assert (await read_frame(reader))["type"] == "pong"
            finally:
                writer.close()
    finally:
        server.stop()
