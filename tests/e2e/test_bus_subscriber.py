"""The room bus's own connections (rooms/runtime/redis_pubsub.py), subscriber
and publisher, against real redis-servers: the machine's, and private ones
with TLS, a password and a Unix socket; and against a server of the test's
own that sends replies cut anywhere, garbage, errors, or nothing.

The bus reads in bulk and publishes in batches, so what matters is that
nothing is lost, reordered or glued together whatever the reads return, and
that a broken connection is an error the bus reconnects on, never a hang or
a silent loss.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rooms.runtime.redis_pubsub import PublisherConnection, SubscriberConnection
from tests.e2e.server import free_port
from tests.e2e.services import REDIS_TEST_URL, PrivateRedis, check_redis


async def _read_messages(conn: SubscriberConnection, want: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """(channel, data) of the next ``want`` messages, and how many reads it took."""
    got: list[tuple[bytes, bytes]] = []
    reads = 0
    while len(got) < want:
        replies = await asyncio.wait_for(conn.read(), 10)
        reads += 1
        got.extend((r[1], r[2]) for r in replies if r[0] == b"message")
    return got, reads


async def _subscribed(conn: SubscriberConnection, *channels: str) -> None:
    for channel in channels:
        await conn.subscribe(channel)
    confirmed: list[bytes] = []
    while len(confirmed) < len(channels):
        confirmed += [r[1] for r in await asyncio.wait_for(conn.read(), 10) if r[0] == b"subscribe"]
    assert confirmed == [c.encode() for c in channels]


async def test_every_message_arrives_once_in_order_read_in_bulk() -> None:
    check_redis()
    a, b = f"dorm:room:t-{uuid.uuid4().hex}", f"dorm:room:t-{uuid.uuid4().hex}"
    conn = SubscriberConnection(REDIS_TEST_URL)
    publisher = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        await _subscribed(conn, a, b)
        # Sizes from empty to several of the reader's reads (a reply cut
        # over reads), bytes that are not UTF-8, and CRLF inside the data.
        sent = []
        for i in range(3000):
            size = (0, 1, 100, 70_000, 600_000)[i % 5] if i % 50 == 0 else 100 + i % 400
            data = (b"E x %d -\n" % i) + bytes((i + j) % 256 for j in range(size)) + b"\r\n"
            sent.append(((a if i % 3 else b).encode(), data))
        pipe = publisher.pipeline(transaction=False)
        for channel, data in sent:
            pipe.publish(channel, data)
        pipe.execute()
        got, reads = await _read_messages(conn, len(sent))
        assert got == sent
        assert reads < len(sent) / 10  # many messages per read, not one each
        await conn.unsubscribe(a)
        publisher.publish(a, b"not for us")
        publisher.publish(b, b"after")
        got, _ = await _read_messages(conn, 1)
        assert got == [(b.encode(), b"after")]
    finally:
        publisher.close()
        await conn.aclose()


async def test_a_killed_connection_is_an_error_not_a_hang() -> None:
    check_redis()
    channel = f"dorm:room:t-{uuid.uuid4().hex}"
    conn = SubscriberConnection(REDIS_TEST_URL)
    admin = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        await _subscribed(conn, channel)
        killed = admin.client_kill_filter(_type="pubsub", skipme=True)
        assert killed >= 1
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(conn.read(), 10)
    finally:
        admin.close()
        await conn.aclose()
    with pytest.raises(ConnectionError):
        await conn.subscribe(channel)  # closed: the bus makes a new one


async def test_an_unreachable_redis_is_a_connection_error() -> None:
    conn = SubscriberConnection(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConnectionError, match="bus connection failed"):
        await conn.subscribe("dorm:room:x")


async def test_published_batches_arrive_once_in_order() -> None:
    """Batches of every size, messages from empty to several of the reader's
    reads, bytes that are not UTF-8 and CRLF inside: one batch is one write."""
    check_redis()
    a, b = f"dorm:room:t-{uuid.uuid4().hex}", f"dorm:room:t-{uuid.uuid4().hex}"
    conn = SubscriberConnection(REDIS_TEST_URL)
    ours = PublisherConnection(REDIS_TEST_URL)
    try:
        await _subscribed(conn, a, b)
        sent: list[tuple[bytes, bytes]] = []
        batch_sizes = (1, 2, 7, 1, 300, 64, 1)
        i = 0
        for size in batch_sizes:
            batch = []
            for _ in range(size):
                n = (0, 1, 100, 70_000, 600_000)[i % 5] if i % 40 == 0 else 100 + i % 400
                data = (b"E x %d -\n" % i) + bytes((i + j) % 256 for j in range(n)) + b"\r\n"
                batch.append((a if i % 3 else b, data))
                i += 1
            await ours.publish(batch, 10)
            sent += [(channel.encode(), data) for channel, data in batch]
        got, _ = await _read_messages(conn, len(sent))
        assert got == sent
    finally:
        await conn.aclose()
        await ours.aclose()


async def test_a_killed_publisher_fails_one_batch_then_reconnects() -> None:
    check_redis()
    channel = f"dorm:room:t-{uuid.uuid4().hex}"
    conn = SubscriberConnection(REDIS_TEST_URL)
    ours = PublisherConnection(REDIS_TEST_URL)
    admin = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        await _subscribed(conn, channel)
        await ours.publish([(channel, b"1")], 10)
        assert ours._writer is not None
        host, port = ours._writer.get_extra_info("sockname")[:2]
        assert admin.client_kill_filter(addr=f"{host}:{port}") == 1
        with pytest.raises(ConnectionError):
            await ours.publish([(channel, b"lost")], 10)
        await ours.publish([(channel, b"2")], 10)  # a new connection
        got, _ = await _read_messages(conn, 2)
        assert got == [(channel.encode(), b"1"), (channel.encode(), b"2")]
    finally:
        admin.close()
        await conn.aclose()
        await ours.aclose()
    with pytest.raises(ConnectionError, match="closed"):
        await ours.publish([(channel, b"3")], 10)


async def test_a_publish_to_an_unreachable_redis_is_a_connection_error() -> None:
    ours = PublisherConnection(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConnectionError, match="bus connection failed"):
        await ours.publish([("dorm:room:x", b"1")], 10)


# -- TLS, passwords and Unix sockets, on a redis-server of the test's own ------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: str, key: Any, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("dorm test CA", "dorm test CA", ca_key, ca_key, True)
    cert = build("127.0.0.1", "dorm test CA", key, ca_key, False)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


PASSWORD = "s3cret-bus-password"


@pytest.fixture
def secured_redis(tmp_path: Path) -> Iterator[tuple[PrivateRedis, int, Path, Path]]:
    """redis-server with a password, TLS on a second port and a Unix socket."""
    check_redis()  # stands for "Redis is installed and runs here"
    ca, cert, key = _certificates(tmp_path)
    tls_port, sock = free_port(), tmp_path / "redis.sock"
    server = PrivateRedis(
        tmp_path, free_port(), password=PASSWORD,
        args=("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
              "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--unixsocket", str(sock)),
    )
    server.start()
    try:
        yield server, tls_port, ca, sock
    finally:
        server.stop()


async def _round_trip(url: str, publisher: redis.Redis) -> None:
    conn = SubscriberConnection(url)
    ours = PublisherConnection(url)
    try:
        await _subscribed(conn, "dorm:room:secured")
        publisher.publish("dorm:room:secured", b"E o 1 -\n{}")
        await ours.publish([("dorm:room:secured", b"E o 2 -\n{}")], 10)
        got, _ = await _read_messages(conn, 2)
        assert got == [(b"dorm:room:secured", b"E o 1 -\n{}"), (b"dorm:room:secured", b"E o 2 -\n{}")]
    finally:
        await conn.aclose()
        await ours.aclose()


async def test_tls_password_and_unix_socket_urls(secured_redis: tuple[PrivateRedis, int, Path, Path]) -> None:
    server, tls_port, ca, sock = secured_redis
    publisher = redis.Redis(port=server.port, password=PASSWORD)
    try:
        await _round_trip(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", publisher)
        await _round_trip(f"redis://default:{PASSWORD}@127.0.0.1:{server.port}/0", publisher)  # user and password
        await _round_trip(f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}", publisher)
        await _round_trip(f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/0?ssl_cert_reqs=none", publisher)
        await _round_trip(f"unix://{sock}?password={PASSWORD}", publisher)
    finally:
        publisher.close()


async def test_tls_refuses_a_certificate_it_cannot_verify(secured_redis: tuple[PrivateRedis, int, Path, Path]) -> None:
    _, tls_port, _, _ = secured_redis
    conn = SubscriberConnection(f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/0")  # the system's CAs only
    with pytest.raises(ConnectionError, match="SSLCertVerificationError"):
        await conn.subscribe("dorm:room:x")


async def test_a_wrong_password_is_refused_in_redis_words_without_the_password(
    secured_redis: tuple[PrivateRedis, int, Path, Path],
) -> None:
    server, _, _, _ = secured_redis
    for url in (f"redis://:not-{PASSWORD}@127.0.0.1:{server.port}/0", f"redis://127.0.0.1:{server.port}/0"):
        conn = SubscriberConnection(url)
        if "not-" in url:
            with pytest.raises(ConnectionError, match="WRONGPASS") as refused:
                await conn.subscribe("dorm:room:x")
            assert PASSWORD not in str(refused.value)
        else:
            # No password: Redis answers the subscribe with an error push.
            await conn.subscribe("dorm:room:x")
            with pytest.raises(ConnectionError, match="NOAUTH"):
                await asyncio.wait_for(conn.read(), 10)
        await conn.aclose()


async def test_a_refused_publisher_tries_again_on_its_next_batch(secured_redis: tuple[PrivateRedis, int, Path, Path]) -> None:
    """A publisher lives as long as the process: a refusal at connect (the
    password, the database) fails that batch only, and the next one connects
    anew, it does not find the connection closed for good."""
    server, _, _, _ = secured_redis
    for url, refused in ((f"redis://:not-{PASSWORD}@127.0.0.1:{server.port}/0", "WRONGPASS"),
                         (f"redis://:{PASSWORD}@127.0.0.1:{server.port}/99", "refused its database")):
        ours = PublisherConnection(url)
        for _ in range(2):
            with pytest.raises(ConnectionError, match=refused):
                await ours.publish([("dorm:room:x", b"1")], 10)
        await ours.aclose()


# -- replies cut anywhere, and garbage: a server of the test's own ----------------------------


class _Feeder:
    """A TCP server that sends chunks it is given, then may close."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.connected.set()
        await reader.read()  # until the client goes

    @classmethod
    async def serve(cls) -> AsyncIterator[tuple[_Feeder, str]]:
        feeder = cls()
        server = await asyncio.start_server(feeder.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield feeder, f"redis://127.0.0.1:{port}/0"
        finally:
            if feeder.writer is not None:
                feeder.writer.close()
            server.close()


def _message(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(data), data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    messages=st.lists(st.tuples(st.binary(min_size=1, max_size=30), st.binary(max_size=300)), min_size=1, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=30),
)
def test_replies_cut_anywhere_arrive_whole_and_in_order(
    messages: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(_message(c, d) for c, d in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})

    async def run() -> None:
        async for feeder, url in _Feeder.serve():
            conn = SubscriberConnection(url)
            await conn.subscribe("dorm:room:x")
            await feeder.connected.wait()
            assert feeder.writer is not None
            for start, end in zip(points, points[1:]):
                feeder.writer.write(stream[start:end])
                await feeder.writer.drain()
                await asyncio.sleep(0)
            got, _ = await _read_messages(conn, len(messages))
            assert got == messages
            await conn.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"%%% not RESP\r\n", "malformed reply"),
        (b"-ERR something broke\r\n", "error from Redis: ERR something broke"),
        (_message(b"dorm:room:x", b"whole") + b"*3\r\n$7\r\nmess", "closed by Redis"),  # cut, then closed
    ],
)
async def test_garbage_errors_and_a_cut_connection_are_connection_errors(sent: bytes, error: str) -> None:
    async for feeder, url in _Feeder.serve():
        conn = SubscriberConnection(url)
        await conn.subscribe("dorm:room:x")
        await feeder.connected.wait()
        assert feeder.writer is not None
        feeder.writer.write(sent)
        await feeder.writer.drain()
        if sent.startswith(b"*3"):
            got, _ = await _read_messages(conn, 1)  # what came whole is not lost
            assert got == [(b"dorm:room:x", b"whole")]
            feeder.writer.close()
        with pytest.raises(ConnectionError, match=error):
            await asyncio.wait_for(conn.read(), 10)
        await conn.aclose()


@pytest.mark.parametrize(
    ("answer", "error", "in_step"),
    [
        (b"", "no answer from Redis within 0.3 s", False),  # Redis hangs
        (b":1\r\n-NOPERM this user has no permissions to access the channel\r\n", "refused by Redis: NOPERM", True),
        (b":1\r\n%%% not RESP\r\n", "malformed reply", False),
        (b":1\r\n", "closed by Redis|connection lost", False),  # one answer of two, then closed
    ],
)
async def test_a_publish_not_answered_in_full_is_a_connection_error(answer: bytes, error: str, in_step: bool) -> None:
    async for feeder, url in _Feeder.serve():
        ours = PublisherConnection(url)
        publishing = asyncio.ensure_future(ours.publish([("dorm:room:x", b"1"), ("dorm:room:x", b"2")], 0.3))
        await feeder.connected.wait()
        assert feeder.writer is not None
        feeder.writer.write(answer)
        await feeder.writer.drain()
        if "closed" in error:
            feeder.writer.close()
        with pytest.raises(ConnectionError, match=error):
            await asyncio.wait_for(publishing, 10)
        # Out of step: the connection is dropped (the next batch opens another).
        assert (ours._writer is not None) is in_step
        await ours.aclose()


def test_hiredis_is_the_parser() -> None:
    # redis-py picks hiredis when installed; the bus needs it (requirements.txt).
    from redis._parsers import _AsyncHiredisParser
    from redis.asyncio.connection import DefaultParser

    assert DefaultParser is _AsyncHiredisParser
    assert hiredis.__version__
