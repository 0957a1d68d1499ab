"""The room bus's own Redis connections: pub/sub read in bulk, PUBLISH in batches.

Every event of a room goes through the bus once per subscribed process (the
owner reads its own back too, and drops it), so the read is on the hot path of
the distributed mode. redis-py's ``PubSub.get_message`` cost ~51 us of CPU per
message read (~27 us with hiredis): per message a health check, a retry
wrapper, an async timeout, an observability hook and a dict. The subscriber
connection reads what the socket has and parses every complete reply in one
go with hiredis' C parser: ~5 us per message (``bench/bus_read.py``,
docs/performance.md "Seventh round").

The owner publishes each commit's events (and the replies to other
processes' sockets) as one batch. Through a redis-py pipeline a batch cost
124-150 us of CPU; the publisher connection writes the packed ``PUBLISH``
commands at once and reads their replies with the same parser: 64-69 us
(``bench/bus_publish.py``, docs/performance.md "Seventeenth round").

The same command connection carries the forward loop's sends to other
processes' inboxes (``channel_layer.InboxSender``: the inbox's send script by
``EVALSHA``) and the inbox loop's receives (``channel_layer.InboxReceiver``:
the receive script, and BZPOPMIN when the inbox is empty).

They speak only what those need (AUTH and SELECT; SUBSCRIBE, UNSUBSCRIBE and
the pushes that follow; PUBLISH; EVALSHA, EVAL and BZPOPMIN) and take the same
``REDIS_URL`` as redis-py (``redis://``, ``rediss://`` with its ``ssl_*``
options, ``unix://``, a database number). Every other command stays on
redis-py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import RedisSSLContext
from redis.connection import SSLConnection, parse_url

CONNECT_TIMEOUT = 5.0
READ_SIZE = 256 * 1024

def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context redis-py builds for a ``rediss://`` URL's ``ssl_*``
    options (its own class and defaults: certificates and host name checked)."""
    return RedisSSLContext(
        keyfile=options.get("ssl_keyfile"),
        certfile=options.get("ssl_certfile"),
        cert_reqs=options.get("ssl_cert_reqs", "required"),
        include_verify_flags=options.get("ssl_include_verify_flags"),
        exclude_verify_flags=options.get("ssl_exclude_verify_flags"),
        ca_certs=options.get("ssl_ca_certs"),
        ca_data=options.get("ssl_ca_data"),
        ca_path=options.get("ssl_ca_path"),
        check_hostname=options.get("ssl_check_hostname", True),
        min_version=options.get("ssl_min_version"),
        ciphers=options.get("ssl_ciphers"),
        password=options.get("ssl_password"),
    ).get()


class BusConnection:
    """One connection to Redis, opened on first use: commands written
    packed, replies parsed in bulk. Failures are ``ConnectionError``."""

    def __init__(self, url: str) -> None:
        self._options = parse_url(url)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()
        self._closed = False

    async def _connect(self) -> None:
        if self._closed:
            raise ConnectionError("bus connection closed")
        o = self._options
        if "path" in o:
            opening = asyncio.open_unix_connection(o["path"], limit=READ_SIZE)
        else:
            tls = tls_context(o) if o.get("connection_class") is SSLConnection else None
            opening = asyncio.open_connection(o.get("host", "localhost"), o.get("port", 6379), ssl=tls, limit=READ_SIZE)
        try:
            self._reader, self._writer = await asyncio.wait_for(opening, CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionError(f"bus connection failed: {type(exc).__name__}") from exc
        sock = self._writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A peer that vanished without closing (a partition) is noticed.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if o.get("password"):
            auth = ("AUTH", o["username"], o["password"]) if o.get("username") else ("AUTH", o["password"])
            # Refused in Redis' own words ("WRONGPASS ...", "NOAUTH ..."), never the password.
            await self._set_up(auth, "bus authentication failed")
        if o.get("db"):
            # The URL's database (pub/sub channels ignore it; keys do not).
            await self._set_up(("SELECT", int(o["db"])), "bus connection refused its database")

    async def _set_up(self, command: tuple[str | int, ...], refused: str) -> None:
        """One command of the connection's set-up, answered before anything else is sent."""
        assert self._writer is not None
        self._writer.write(hiredis.pack_command(command))
        (reply,) = await asyncio.wait_for(self._replies(), CONNECT_TIMEOUT)
        if isinstance(reply, Exception):
            self._drop()
            raise ConnectionError(f"{refused}: {reply}")

    async def _write(self, packed: bytes) -> None:
        if self._writer is None:
            await self._connect()
        assert self._writer is not None
        if self._writer.is_closing():
            raise ConnectionError("bus connection closed")
        self._writer.write(packed)
        try:
            await self._writer.drain()
        except OSError as exc:
            raise ConnectionError(f"bus connection lost: {type(exc).__name__}") from exc

    async def _replies(self) -> list[Any]:
        reader = self._reader
        if reader is None:
            raise ConnectionError("bus connection not open")
        parser = self._parser
        while True:
            replies = []
            try:
                reply = parser.gets()
                while reply is not False:
                    replies.append(reply)
                    reply = parser.gets()
            except hiredis.ProtocolError as exc:
                raise ConnectionError("bus connection sent a malformed reply") from exc
            if replies:
                return replies
            try:
                data = await reader.read(READ_SIZE)
            except OSError as exc:
                raise ConnectionError(f"bus connection lost: {type(exc).__name__}") from exc
            if not data:
                raise ConnectionError("bus connection closed by Redis")
            parser.feed(data)

    def _drop(self) -> None:
        """Forget the connection (the next call opens a new one) without
        waiting for it to close."""
        writer, self._writer, self._reader = self._writer, None, None
        self._parser = hiredis.Reader()
        if writer is not None:
            writer.close()

    async def aclose(self) -> None:
        """Close for good: every later call raises ``ConnectionError``."""
        self._closed = True
        writer = self._writer
        self._drop()
        if writer is not None:
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass


class SubscriberConnection(BusConnection):
    """One pub/sub connection. ``read()`` returns every complete reply that
    has arrived (subscribe confirmations and messages, in order), waiting
    for the first; it raises ``ConnectionError`` once the connection is
    gone. Commands are sent by one caller at a time (the bus's lock)."""

    async def subscribe(self, channel: str) -> None:
        await self._write(hiredis.pack_command(("SUBSCRIBE", channel)))

    async def unsubscribe(self, channel: str) -> None:
        await self._write(hiredis.pack_command(("UNSUBSCRIBE", channel)))

    async def read(self) -> list[Any]:
        replies = await self._replies()
        for reply in replies:
            if isinstance(reply, Exception):
                # An error pushed on a subscribed connection: nothing on it can
                # be trusted any more; the bus reconnects.
                raise ConnectionError(f"bus connection error from Redis: {reply}")
        return replies


class CommandConnection(BusConnection):
    """Commands from one task at a time: each batch of them packed in one
    write, their replies read in one go with hiredis' parser.

    ``call`` returns the replies, in order (an error reply, such as
    ``NOSCRIPT`` or ``NOPERM``, as an exception object in its place), once
    Redis has answered every command. A batch that fails (the connection
    lost, no answer within ``timeout``, a reply that is not RESP) raises
    ``ConnectionError``: whether its commands ran is unknown, as with a
    failed pipeline. The connection is then dropped and the next batch opens
    a new one.
    """

    async def call(self, commands: Sequence[tuple[str | bytes | int | float, ...]], timeout: float) -> list[Any]:
        if self._closed:
            raise ConnectionError("bus connection closed")
        packed = b"".join([hiredis.pack_command(command) for command in commands])
        replies: list[Any] = []
        try:
            async with asyncio.timeout(timeout):
                await self._write(packed)
                while len(replies) < len(commands):
                    replies += await self._replies()
        except TimeoutError:
            self._drop()
            raise ConnectionError(f"no answer from Redis within {timeout:g} s") from None
        except BaseException:
            self._drop()  # its replies may still come: out of step
            raise
        if len(replies) != len(commands):  # more replies than commands: out of step
            self._drop()
            raise ConnectionError("bus connection sent replies to nothing")
        return replies


class PublisherConnection(CommandConnection):
    """The bus's publishing connection, used by one task (the bus's writer):
    ``publish`` sends a batch of ``PUBLISH`` commands and returns once Redis
    has taken them all. A refusal (an error reply) is a ``ConnectionError``
    as well; the connection stays, in step."""

    async def publish(self, messages: Sequence[tuple[str, bytes]], timeout: float) -> None:
        for reply in await self.call([("PUBLISH", channel, data) for channel, data in messages], timeout):
            if isinstance(reply, Exception):
                raise ConnectionError(f"bus publish refused by Redis: {reply}")
