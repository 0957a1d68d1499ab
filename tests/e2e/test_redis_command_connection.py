"""The inbox scripts' command connection (rooms/runtime/redis_wire.py) against
real redis-servers: the machine's, and a private one with a password, TLS and
a Unix socket. A reply must always be the reply to its own command: an error
reply leaves the connection usable, and a call cancelled or cut before its
reply leaves nothing behind for the next call to read.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis
from redis.exceptions import ResponseError

from rooms.runtime.channel_layer import DormRedisChannelLayer
from rooms.runtime.redis_wire import CommandConnection
from tests.e2e.services import REDIS_TEST_URL, PrivateRedis, check_redis
from tests.e2e.test_bus_subscriber import PASSWORD, secured_redis  # noqa: F401 (fixture)

SCRIPT = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"


async def test_replies_errors_and_scripts_loaded_when_redis_forgot_them() -> None:
    check_redis()
    conn = CommandConnection(REDIS_TEST_URL)
    try:
        assert await conn.call("PING") == b"PONG"
        with pytest.raises(ResponseError, match="unknown command"):
            await conn.call("NOT-A-COMMAND")
        assert await conn.call("ECHO", b"\x00\r\n\xff") == b"\x00\r\n\xff"  # still in step after the error
        assert await conn.script(SCRIPT, ["k"], ["v", 41]) == [b"k", b"v", 42]
        await conn.call("SCRIPT", "FLUSH")  # a restarted Redis: the script is loaded again
        assert await conn.script(SCRIPT, ["k2"], [b"w", 1.0]) == [b"k2", b"w", 2]
        with pytest.raises(ResponseError, match="from the script"):
            await conn.script("return redis.error_reply('ERR from the script')", [], [])
        assert await conn.call("PING") == b"PONG"
    finally:
        await conn.aclose()


async def test_a_cancelled_call_does_not_leave_its_reply_to_the_next() -> None:
    check_redis()
    conn = CommandConnection(REDIS_TEST_URL)
    key = f"t-{uuid.uuid4().hex}"
    try:
        waiting = asyncio.ensure_future(conn.call("BLPOP", key, 1))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # Without dropping the connection this would read BLPOP's nil.
        assert await conn.call("PING") == b"PONG"
        assert await asyncio.wait_for(asyncio.gather(*(conn.call("ECHO", str(i)) for i in range(50))), 10) == [
            str(i).encode() for i in range(50)
        ]
    finally:
        await conn.aclose()


async def test_a_killed_connection_is_an_error_and_the_next_call_reconnects() -> None:
    check_redis()
    conn = CommandConnection(REDIS_TEST_URL)
    admin = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        assert await conn.call("CLIENT", "SETNAME", "dorm-test-killed") == b"OK"
        assert admin.client_kill_filter(_type="normal", skipme=True, client_name="dorm-test-killed") == 1  # type: ignore[call-arg]
        with pytest.raises(ConnectionError):
            await conn.call("PING")
        assert await conn.call("PING") == b"PONG"
    finally:
        admin.close()
        await conn.aclose()
    with pytest.raises(ConnectionError, match="closed"):
        await conn.call("PING")


async def test_the_url_database_password_tls_and_unix_socket(
    secured_redis: tuple[PrivateRedis, int, Path, Path],  # noqa: F811
) -> None:
    server, tls_port, ca, sock = secured_redis
    reader = redis.Redis(port=server.port, password=PASSWORD, db=5)
    try:
        for i, url in enumerate((
            f"redis://:{PASSWORD}@127.0.0.1:{server.port}/5",
            f"redis://default:{PASSWORD}@127.0.0.1:{server.port}/5",
            f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/5?ssl_ca_certs={ca}",
            f"unix://{sock}?password={PASSWORD}&db=5",
        )):
            conn = CommandConnection(url)
            try:
                assert await conn.call("SET", f"k{i}", url) == b"OK"
            finally:
                await conn.aclose()
            assert reader.get(f"k{i}") == url.encode()  # in the URL's database
        bad = CommandConnection(f"redis://:wrong@127.0.0.1:{server.port}/0")
        for _ in range(2):  # refused each time, never closed for good
            with pytest.raises(ConnectionError, match="WRONGPASS") as refused:
                await bad.call("PING")
            assert "wrong" not in str(refused.value).replace("WRONGPASS", "")
        await bad.aclose()
    finally:
        reader.close()


async def test_the_layer_sends_and_receives_over_its_own_connections_in_order() -> None:
    """Through the layer: every message once and in order, a full inbox
    refused, and the layer's redis-py pool untouched by the scripts."""
    check_redis()
    layer = DormRedisChannelLayer(hosts=[REDIS_TEST_URL], prefix=f"t-{uuid.uuid4().hex[:8]}", capacity=100)
    inbox = await layer.new_channel("dorm.inbox.")
    try:
        for i in range(100):
            await layer.send(inbox, {"type": "dorm.items", "n": i})
        from channels.exceptions import ChannelFull

        with pytest.raises(ChannelFull):
            await layer.send(inbox, {"type": "dorm.items", "n": 100})
        got = [(await layer.receive(inbox))["n"] for _ in range(100)]
        assert got == list(range(100))
        assert {key[2] for key in layer._wires} == {"send", "receive"}
    finally:
        await layer.flush()
    assert layer._wires == {}  # closed with the pools
