"""The WebSocket consumer: one per connection.

It owns the edge: the handshake checks (room id, identity, ``since``), the
envelope of each frame (JSON object, ``type``, ``id``, size), ``ping`` and
``heartbeat``; everything else goes to the room's actor. It never lets an
exception out: daphne would answer it with close code 1011, which some mobile
stacks treat as "stop reconnecting".

Channels' own dispatch is bypassed on purpose: it closes old database
connections on every message (a thread hop per frame) and gives each
connection a channel-layer channel that fan-out does not use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import orjson
from asgiref.sync import markcoroutinefunction
from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from django.db import DatabaseError

from billing import budgets
from billing.conf import billing_settings
from billing.flush import ensure_flusher
from billing.meter import KEEPALIVE_OP, close_label, meter
from rooms import limits, validation
from rooms.access import db_load_access
from rooms.auth import Identity, Refusal, identify
from rooms.conf import dorm_settings
from rooms.kinds import UnknownKind, kind_class
from rooms.kinds.base import RoomKind
from rooms.protocol import (
    MAX_CLIENT_ID_CHARS,
    MESSAGE_TYPE_RE,
    ROOM_ID_RE,
    CloseCode,
    ErrorReason,
    close_frame,
    dumps,
    now_ms,
)
from rooms.runtime.connection import Connection, ConnectionState
from rooms.runtime.direct_write import answer_at_edge, application_queue, close_cleanly_on_protocol_errors, close_socket
from rooms.runtime.messages import Binary, Frame, Join, Leave
from rooms.runtime.registry import get_runtime

log = logging.getLogger("dorm.rooms")


class RoomConsumer(AsyncConsumer):
    conn: Connection | None = None
    identity: Identity | None = None
    room: str = ""
    # Fires at the token's expiry (closes with 4401).
    _expiry: asyncio.TimerHandle | None = None
    _expiry_task: asyncio.Task[None] | None = None
    # Holds a place in a size-limited room (given back at disconnect).
    _placed = False
    # The room's kind, to check frames at the edge (rooms/validation.py).
    _kind: type[RoomKind] | None = None
    # time.monotonic() at the handshake (billing: long-session latency).
    _connected_at = 0.0
    # The server's queue of this socket's messages: while this consumer waits
    # on it with nothing queued (``awaited_empty``), a keepalive can be
    # answered in the server's read (``_answer_at_edge``).
    _queue: Any = None

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Any:
        """Channels' ``as_asgi``, handing the consumer's coroutine over instead
        of awaiting it (rooms/asgi.py says why)."""

        @markcoroutinefunction
        def app(scope: dict[str, Any], receive: Any, send: Any) -> Any:
            return cls(**initkwargs)(scope, receive, send)

        app.consumer_class = cls  # type: ignore[attr-defined]
        app.consumer_initkwargs = initkwargs  # type: ignore[attr-defined]
        return app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' ``AsyncConsumer.__call__`` for a consumer with no channel layer.

        Channels runs ``await_many_dispatch``: a new task for every
        ``receive()`` and an ``asyncio.wait`` around it, for every message, so
        that a channel layer's channel can be read at the same time. With no
        layer there is one source, read here in order, in this task: no task
        or wait per frame, and ~1.5 KB less per idle socket (the pending
        receive task and its wait). Cancellation reaches ``receive()``
        directly, as it reached Channels' receive task; each frame still
        lets the loop run others before the next (``sleep(0)``), as the new
        task per frame did.
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        self._queue = application_queue(receive)
        try:
            while True:
                await self.dispatch(await receive())
                # Other sockets' frames go in between, as with Channels' new
                # task per frame: a socket whose queue holds many frames
                # (one network read) does not run them all in one go.
                await asyncio.sleep(0)
        except StopConsumer:
            pass

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        try:
            if kind == "websocket.receive":
                await self.receive(message)
            elif kind == "websocket.connect":
                try:
                    await self.connect()
                finally:
                    _release_headers(self.scope)
            elif kind == "websocket.disconnect":
                # daphne gives code None for a close frame without a status
                # code (ws.close() in browsers and Node's `ws`): RFC 6455's
                # 1005, "no status received", not a crash in the ledger.
                code = message.get("code", 1006)
                self.disconnect(1005 if code is None else code, message.get("reason") or "")
                raise StopConsumer
        except StopConsumer:
            raise
        except Exception:
            log.exception("consumer error room=%s event=%s", self.room, kind)
            await self._fail()

    async def _fail(self) -> None:
        if self.conn is not None:
            if self.conn.closed:
                return
            await self.conn.close(CloseCode.TRY_AGAIN_LATER, "internal error, reconnect")
            return
        try:
            await self.base_send({"type": "websocket.send", "text": close_frame(CloseCode.TRY_AGAIN_LATER, "internal error")})
            await close_socket(self.base_send, CloseCode.TRY_AGAIN_LATER, "internal error")
        except Exception:
            log.debug("close after failure on a dead socket room=%s", self.room)

    # -- connect --------------------------------------------------------------

    async def connect(self) -> None:
        await self.base_send({"type": "websocket.accept"})
        close_cleanly_on_protocol_errors(self.base_send)
        self.room = str(self.scope["url_route"]["kwargs"].get("room", ""))
        ensure_flusher()
        if get_runtime().shutting_down:
            await self._refuse(CloseCode.GOING_AWAY, "server shutting down, reconnect")
            return
        try:
            query = self._query()
            if not ROOM_ID_RE.fullmatch(self.room):
                raise Refusal(CloseCode.BAD_REQUEST, "room id must be 1-64 characters of A-Z a-z 0-9 _ -")
            if self.room in budgets.blocked:  # an in-memory set, refreshed by billing
                raise Refusal(CloseCode.OVER_BUDGET, "room over its monthly cost budget")
            since = self._since(query)
            # The cheapest refusal first: a flood from one address costs one
            # bucket check each, no database lookup and no signature check.
            client = self.scope.get("client") or ("", 0)
            refused = await limits.admit_connection(str(client[0]), self.room)
            if refused is not None:
                raise Refusal(*refused)
            try:
                access = await db_load_access(self.room)
            except DatabaseError as exc:
                # Database down or over its deadline (db_watchdog): try again later.
                log.warning("access lookup failed room=%s error=%s", self.room, type(exc).__name__)
                raise Refusal(CloseCode.TRY_AGAIN_LATER, "storage unavailable, retry later") from None
            self.identity = identify(query, self.room, access)
            self._kind = _kind_or_none(access.kind)
            conn = Connection(self.room, self.identity.user_id, self.identity.scope, self.base_send)
            conn.binary = bool(self._kind is not None and self._kind.accepts_binary)
            # Atomic in its store (memory or Redis): two handshakes cannot
            # both take the last place, even on two processes.
            placed = await limits.admit_occupancy(self.room, conn.id, access.max_connections)
            if isinstance(placed, tuple):
                raise Refusal(*placed)
            self._placed = placed
        except Refusal as refusal:
            await self._refuse(refusal.code, refusal.reason)
            return
        runtime = get_runtime()
        self.conn = conn
        self._connected_at = time.monotonic()
        runtime.hub.add(conn)
        runtime.outbound_watch.start()
        runtime.registry.submit(self.room, Join(conn, since))
        # The ledger row is written in a later batch, never on this path.
        service = runtime.presence_service
        service.ensure_started()
        service.opened(conn, _header(self.scope, b"user-agent"), str(client[0]))
        if not conn.binary and conn.write_frame is not None and self._queue is not None:
            answer_at_edge(self.base_send, self._answer_at_edge)
        if self.identity.expires_at is not None:
            delay = max(0.0, self.identity.expires_at - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        # Kept referenced until done (a bare task may be collected mid-flight).
        self._expiry_task = asyncio.ensure_future(conn.close(CloseCode.UNAUTHORIZED, "token expired"))

    def _query(self) -> dict[str, str]:
        raw = self.scope.get("query_string", b"")
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=16))
        except (UnicodeDecodeError, ValueError):
            raise Refusal(CloseCode.BAD_REQUEST, "malformed query string") from None

    @staticmethod
    def _since(query: dict[str, str]) -> int | None:
        value = query.get("since")
        if value is None:
            return None
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            raise Refusal(CloseCode.BAD_REQUEST, "since must be a non-negative integer")
        return int(value)

    async def _refuse(self, code: int, reason: str) -> None:
        log.info("refuse room=%s code=%d reason=%s", self.room[:64], code, reason)
        meter.op("close", str(int(code)))
        await self.base_send({"type": "websocket.send", "text": close_frame(code, reason)})
        await close_socket(self.base_send, code, reason)

    # -- frames ---------------------------------------------------------------

    async def receive(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        received = time.perf_counter()
        text = message.get("text")
        if text is None:
            data = message.get("bytes") or b""
            meter.frame_in(self.room, len(data))
            if len(data) > dorm_settings.HARD_FRAME_LIMIT_BYTES:
                await conn.close(CloseCode.MESSAGE_TOO_BIG, "frame larger than the hard limit")
                return
            if self._kind is not None and self._kind.accepts_binary:
                # The kind's protocol checks the bytes. Not rate-limited like
                # JSON messages: a dropped Yjs update is a divergence the
                # protocol cannot see (the size limits still hold).
                if conn.scope == "read":
                    return  # read-only members receive but never write
                get_runtime().registry.submit(self.room, Binary(conn, bytes(data)))
                return
            await conn.error(ErrorReason.INVALID_MESSAGE, None, "binary frames are not accepted by this room kind")
            return
        keepalive = None
        try:
            keepalive = await self._text(conn, text, received)
        finally:
            if keepalive is None:
                meter.frame_in(self.room, len(text) if text.isascii() else len(text.encode()))
            else:
                # A keepalive is the socket's, not the room's traffic: counted
                # for all rooms (billing_opscount), so a room whose clients
                # only keep their sockets alive has a silent minute (no usage
                # row; its connection span bills the sockets).
                meter.op(KEEPALIVE_OP, keepalive)

    def _answer_at_edge(self, text: str) -> bool:
        """Answer a keepalive in the server's read of the socket, before it
        is queued for this consumer; False: queue it as any other message.

        What ``_text`` does for a ``ping`` or ``heartbeat`` (the pong, the
        socket's liveness, the round trip and keepalive meters), in this
        call: no task wake, no queue, one JSON parse. Taken only while the
        consumer waits with nothing of this socket's in hand, so a pong never
        overtakes a reply to an earlier frame. The backend's last-seen is
        refreshed within the presence service's batch window
        (``touch_soon``), not awaited. Anything else, an invalid frame
        included, goes the usual way and gets the usual answer.
        """
        if '"ping"' not in text and '"heartbeat"' not in text:
            return False
        conn = self.conn
        if conn is None or not self._queue.awaited_empty() or conn.state is not ConnectionState.OPEN:
            return False
        envelope = _envelope(text)
        if type(envelope) is _Fault or envelope[0] not in KEEPALIVES:
            return False
        type_, _, payload = envelope
        if type_ == "ping" and not conn.reply_now(_pong(payload)):
            return False  # nothing done yet: the consumer sends it
        try:
            runtime = get_runtime()
            service = runtime.presence_service
            if service.heard(conn, True):
                service.touch_soon(conn)
            if type_ == "ping":
                self._round_trip(payload)
            meter.op(KEEPALIVE_OP, type_)
            runtime.keepalives_at_edge += 1
        except Exception:
            # The answer went out; this only notes it. An exception must not
            # reach daphne's read, which would drop the socket, nor send the
            # frame on to be answered twice.
            log.exception("keepalive bookkeeping failed room=%s type=%s", self.room, type_)
        return True

    def _round_trip(self, payload: Any) -> None:
        rtt = payload.get("rtt") if type(payload) is dict else None
        if type(rtt) in (int, float) and 0 <= rtt <= 600_000:
            # The client's measured round trip of an earlier ping (ms):
            # an optional field (docs/billing.md), metered for latency.
            long_session = time.monotonic() - self._connected_at >= billing_settings.ALERT_MIN_SESSION_SECONDS
            meter.round_trip(self.room, float(rtt), long_session)

    async def _text(self, conn: Connection, text: str, received: float) -> str | None:
        """Handle one text frame; its type when it was a keepalive (``ping``, ``heartbeat``)."""
        envelope = _envelope(text)
        if type(envelope) is _Fault:
            if envelope.reason == ErrorReason.TOO_LARGE and len(text.encode()) > dorm_settings.HARD_FRAME_LIMIT_BYTES:
                await conn.close(CloseCode.MESSAGE_TOO_BIG, "frame larger than the hard limit")
            else:
                await conn.error(envelope.reason, envelope.client_id, envelope.detail)
            return None
        type_, client_id, payload = envelope
        runtime = get_runtime()
        # Any frame says the socket is alive; the backend's last-seen is
        # refreshed on keepalives (a ping is a heartbeat with a reply: the
        # shipped clients send only pings) and at most every quarter TTL
        # otherwise.
        if runtime.presence_service.heard(conn, type_ in KEEPALIVES):
            try:
                await runtime.presence.touch(self.room, conn.id, conn.user_id)
            except Exception as exc:
                # The presence backend (Redis) is down or restarting: the
                # socket and its room are fine, so keep them; the next
                # heartbeat refreshes last-seen (a restarted Redis lost the
                # entries anyway, and the cluster resets its sockets).
                log.warning("presence touch failed room=%s user=%s error=%s", self.room, conn.user_id, type(exc).__name__)
        if type_ == "ping":
            await conn.reply(_pong(payload))
            self._round_trip(payload)
            return type_
        if type_ == "heartbeat":
            return type_
        kind = self._kind
        if kind is not None:
            refused = validation.refuse(kind, conn.scope, type_, payload)
            if refused is not None:
                await conn.error(refused[0], client_id, refused[1])
                return None
        # After validation: an invalid frame costs no token (and, in the
        # distributed mode, no Redis round trip); the abuse counter bounds it.
        wait_ms = await limits.admit_message(self.identity, self.room)  # type: ignore[arg-type]
        if wait_ms is not None:
            # Not abuse (PROTOCOL.md section 5): the frame is dropped, nothing
            # is stored, the connection stays. `id` (an added optional field)
            # tells the client which message to send again.
            limited: dict[str, Any] = {"type": "rate_limited", "retryAfterMs": wait_ms}
            if client_id is not None:
                limited["id"] = client_id
            await conn.reply(dumps(limited))
            return None
        runtime.registry.submit(self.room, Frame(conn, type_, client_id, payload, received))
        return None

    # -- disconnect -------------------------------------------------------------

    def disconnect(self, code: int, reason: str) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        conn = self.conn
        if conn is None:
            return
        if self._placed:
            self._placed = False
            limits.release_occupancy(self.room, conn.id)
        answer_at_edge(self.base_send, None)  # the protocol lets go of this consumer
        runtime = get_runtime()
        runtime.hub.remove(conn)
        if conn.close_code is not None:  # we closed it: our code says why
            code, reason = conn.close_code, conn.close_reason
        meter.op("close", close_label(code))
        conn.state = ConnectionState.CLOSED
        runtime.presence_service.closed(conn, code, reason)
        if not conn.refused:
            runtime.registry.submit(self.room, Leave(conn, code, reason))
        log.info("disconnect room=%s user=%s conn=%s code=%s", self.room, conn.user_id, conn.id, code)


def _release_headers(scope: dict[str, Any]) -> None:
    """Let the handshake's headers go once the connection is set up: the
    origin check and ``connect`` (the user agent) have read them, and nothing
    reads them later. daphne's protocol holds the same list as its
    ``clean_headers``, so it is emptied in place (~1.3 KiB per idle socket)."""
    headers = scope.get("headers")
    if type(headers) is list:
        headers.clear()


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return ""


def _kind_or_none(name: str) -> type[RoomKind] | None:
    try:
        return kind_class(name)
    except UnknownKind:
        # A room whose kind is no longer configured: the actor refuses it.
        return None


# The client frames that only keep a socket alive (not the room's traffic).
KEEPALIVES = frozenset(("ping", "heartbeat"))


class _Fault(NamedTuple):
    """Why a text frame's envelope is refused: ``conn.error``'s arguments."""

    reason: str
    client_id: str | None = None
    detail: str | None = None


def _envelope(text: str) -> tuple[str, str | None, Any] | _Fault:
    """A text frame's envelope, ``(type, id, payload)``, or why it is refused."""
    if _utf8_size_at_least(text, dorm_settings.SOFT_FRAME_LIMIT_BYTES) > dorm_settings.SOFT_FRAME_LIMIT_BYTES:
        return _Fault(ErrorReason.TOO_LARGE)
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _Fault(ErrorReason.INVALID_JSON)
    if type(obj) is not dict:
        return _Fault(ErrorReason.INVALID_JSON, None, "a frame is one JSON object")
    client_id = obj.get("id")
    if client_id is not None and (type(client_id) is not str or not 0 < len(client_id) <= MAX_CLIENT_ID_CHARS):
        return _Fault(ErrorReason.INVALID_MESSAGE, None, f"id must be a string of 1-{MAX_CLIENT_ID_CHARS} characters")
    type_ = obj.get("type")
    if type(type_) is not str or not MESSAGE_TYPE_RE.fullmatch(type_):
        return _Fault(ErrorReason.INVALID_MESSAGE, client_id, "type must match [a-z_]{1,32}")
    return type_, client_id, obj.get("payload")


def _pong(payload: Any) -> str:
    """The reply to a ``ping``: its small scalar ``t`` echoed, the server's time."""
    t = payload.get("t") if type(payload) is dict else None
    return dumps({"type": "pong", "payload": {"t": t} if t is not None and _small_scalar(t) else {}, "ts": now_ms()})


def _utf8_size_at_least(text: str, limit: int) -> int:
    """The frame's UTF-8 size, encoding only when the length alone cannot tell."""
    n = len(text)
    if n > limit or n * 4 <= limit:
        return n
    return len(text.encode())


def _small_scalar(value: Any) -> bool:
    if type(value) is str:
        return len(value) <= 64
    return type(value) in (int, float, bool)
