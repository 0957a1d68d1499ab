"""The Dorm client on asyncio and ``websockets``: the JavaScript client's semantics.

- connect with a token or a userId; reconnect with exponential backoff and
  jitter capped at 30 s; 4401 calls ``refresh_token`` then reconnects; the
  terminal codes (4400, 4402, 4403, 4404, 1009) stop the client;
- resume with ``since`` = the last contiguous seq seen, so nothing is missed
  or delivered twice across reconnects;
- ``send`` queues while offline and resends with the same id after each
  reconnect (the server applies an id once); the returned handle is awaitable
  and resolves to the ack (``{"id", "seq", ...}``) or raises :class:`DormError`;
- ping/heartbeat, presence helpers, ``on(type, fn)`` returning an unsubscribe,
  optimistic local events, connection state events.

Logging carries room, codes and counts, never payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random as _random
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

log = logging.getLogger("dorm.client")

NORMAL = 1000
GOING_AWAY = 1001
ABNORMAL = 1006
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
UNAUTHORIZED = 4401
# Retrying cannot help: stop and fail what is queued.
TERMINAL_CODES = frozenset({4400, 4402, 4403, 4404, MESSAGE_TOO_BIG})

IDLE, CONNECTING, OPEN, RECONNECTING, CLOSED = "idle", "connecting", "open", "reconnecting", "closed"

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0  # the cap, jitter included
HEARTBEAT_SECONDS = 15.0
CONNECT_TIMEOUT_SECONDS = 10.0
INTERNAL_RETRIES = 3

Listener = Callable[[Any], Any]
Credentials = str | dict[str, str] | None
RefreshToken = Callable[[dict[str, Any]], Awaitable[Credentials] | Credentials]


class DormError(Exception):
    """An ``error`` reply to one message, or the client stopping before its ack."""

    def __init__(self, reason: str, detail: str | None = None, **extra: Any) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.id: str | None = extra.get("id")
        self.code: int | None = extra.get("code")
        self.type: str | None = extra.get("type")


def backoff_delay(
    attempt: int,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_MAX_SECONDS,
    random: Callable[[], float] = _random.random,
) -> float:
    """Exponential with equal jitter (half fixed, half random), never above ``cap``."""
    ceiling = min(cap, base * 2 ** min(attempt, 30))
    return ceiling / 2 + random() * ceiling / 2


@dataclass(eq=False)
class _Outgoing:
    id: str
    type: str
    payload: Any
    future: asyncio.Future[dict[str, Any]]
    sent: bool = False
    internal_retries: int = 0


@dataclass
class SendHandle:
    """What :meth:`DormClient.send` returns: ``await handle`` gives the ack."""

    id: str
    future: asyncio.Future[dict[str, Any]] = field(repr=False)

    def __await__(self) -> Generator[Any, None, dict[str, Any]]:
        return self.future.__await__()


class DormClient:
    def __init__(
        self,
        url: str,
        room: str,
        *,
        user_id: str | None = None,
        token: str | None = None,
        refresh_token: RefreshToken | None = None,
        since: int | None = None,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        heartbeat: float = HEARTBEAT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        internal_retries: int = INTERNAL_RETRIES,
        id_prefix: str | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.base_url = url.rstrip("/")
        self.room = room
        self.user_id = user_id
        self.token = token
        self.refresh_token = refresh_token
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.internal_retries = internal_retries
        self.random = random

        self.state = IDLE
        self.kind: str | None = None
        self.connection_id: str | None = None
        self.latency_ms: float | None = None
        self.members: list[dict[str, str]] = []
        # Every durable event up to last_seq was seen: the next `since`.
        self.last_seq: int | None = since
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._seen_above: set[int] = set()
        self._listeners: dict[str, list[Listener]] = {}
        self._listener_tasks: set[asyncio.Future[Any]] = set()
        self._outbox: dict[str, _Outgoing] = {}  # insertion order = send order
        self._ids = itertools.count(1)
        self._tag = id_prefix or uuid.uuid4().hex[:12]
        self._ws: ClientConnection | None = None
        self._writes: asyncio.Queue[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._drop: asyncio.Event | None = None
        self._open_event = asyncio.Event()
        self._presence_status: str | None = None
        self._paused_until = 0.0
        self._attempt = 0
        self._closing = False

    # -- events ---------------------------------------------------------------

    def on(self, type_: str, fn: Listener) -> Callable[[], None]:
        """Listen to a message type or a client event (``state``, ``welcome``,
        ``reset``, ``ack``, ``reject``, ``latency``, ``members``, ``error``, ``*``)."""
        self._listeners.setdefault(type_, []).append(fn)

        def off() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.get(type_, []).remove(fn)

        return off

    def _emit(self, type_: str, event: Any) -> None:
        for fn in list(self._listeners.get(type_, ())):
            try:
                result = fn(event)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    # Keep a reference until done (the loop holds tasks weakly).
                    self._listener_tasks.add(task)
                    task.add_done_callback(self._listener_tasks.discard)
            except Exception:
                log.exception("listener failed room=%s type=%s", self.room, type_)

    def _set_state(self, state: str, **info: Any) -> None:
        previous, self.state = self.state, state
        if state != OPEN:
            self._open_event.clear()
        self._emit("state", {"state": state, "previous": previous, **info})

    # -- connection -------------------------------------------------------------

    @property
    def url(self) -> str:
        query: dict[str, str] = {}
        if self.token:
            query["token"] = self.token
        elif self.user_id:
            query["userId"] = self.user_id
        if self.last_seq is not None:
            query["since"] = str(self.last_seq)
        base = f"{self.base_url}/ws/{quote(self.room, safe='')}"
        return f"{base}?{urlencode(query)}" if query else base

    def connect(self) -> DormClient:
        """Start connecting in the background (idempotent)."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"dorm-client:{self.room}")
        return self

    async def wait_open(self, timeout: float = 10.0) -> None:
        """Wait until the client is in the room (raises if it stopped for good)."""
        async with asyncio.timeout(timeout):
            while self.state != OPEN:
                if self.state == CLOSED:
                    raise DormError("closed", self.close_reason, code=self.close_code)
                waiter = asyncio.ensure_future(self._open_event.wait())
                done, _ = await asyncio.wait({waiter, self._task} if self._task else {waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

    async def close(self, code: int = NORMAL, reason: str = "client closed") -> None:
        """Close for good: no reconnect; queued messages fail with ``closed``."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(code, reason)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.state != CLOSED:
            self._stop(code, reason)

    async def __aenter__(self) -> DormClient:
        self.connect()
        await self.wait_open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def drop_connection(self) -> None:
        """Cut the current socket as a network failure would (then reconnect)."""
        if self._drop is not None:
            self._drop.set()

    def resync(self) -> None:
        """Rejoin without ``since`` for a full snapshot (a ``reset`` event follows)."""
        self.last_seq = None
        self._seen_above.clear()
        self.drop_connection()

    async def _run(self) -> None:
        unauthorized_in_row = 0
        while not self._closing:
            self.close_code, self.close_reason = None, ""
            code, reason = await self._session()
            if self._closing:
                return
            if self.state == OPEN:  # the session got its welcome
                unauthorized_in_row = 0
            if code in TERMINAL_CODES:
                self._stop(code, reason)
                return
            if code == UNAUTHORIZED:
                unauthorized_in_row += 1
                if not await self._refresh(code, reason, unauthorized_in_row):
                    self._stop(code, reason)
                    return
                if unauthorized_in_row <= 1:
                    continue  # the first refresh reconnects at once
            await self._backoff(code, reason)

    async def _backoff(self, code: int, reason: str) -> None:
        if code == GOING_AWAY:
            delay = self.random() * min(self.backoff_base, 1.0)  # at once, spread out
        elif code == POLICY_VIOLATION:
            delay = self.backoff_max
        else:
            delay = backoff_delay(self._attempt, self.backoff_base, self.backoff_max, self.random)
        self._attempt += 1
        self._set_state(RECONNECTING, code=code, reason=reason, attempt=self._attempt, delay=delay)
        log.info("reconnect room=%s code=%s attempt=%d delay_ms=%d", self.room, code, self._attempt, delay * 1000)
        await asyncio.sleep(delay)

    async def _refresh(self, code: int, reason: str, attempt: int) -> bool:
        if self.refresh_token is None:
            return False
        self._set_state(RECONNECTING, code=code, reason=reason, refreshing=True)
        try:
            fresh = self.refresh_token({"code": code, "reason": reason, "room": self.room, "attempt": attempt})
            if asyncio.iscoroutine(fresh) or isinstance(fresh, Awaitable):
                fresh = await fresh
        except Exception:
            log.warning("refresh_token failed room=%s", self.room)
            return False
        if not fresh:
            return False
        if isinstance(fresh, str):
            self.token = fresh
        else:
            # {"token": ...} or, on a development server with anonymous access, {"userId": ...}.
            self.token = fresh.get("token")
            if fresh.get("userId"):
                self.user_id = fresh["userId"]
        return True

    async def _session(self) -> tuple[int, str]:
        """One connection: open, read until it closes; returns (code, reason)."""
        url = self.url
        self._set_state(CONNECTING, attempt=self._attempt, url=url)
        try:
            ws = await connect(
                url,
                open_timeout=self.connect_timeout,
                # websockets' own keepalive detects a dead peer; the app-level
                # ping below measures latency.
                ping_interval=self.heartbeat,
                ping_timeout=self.heartbeat,
                close_timeout=2,
                max_size=None,
                proxy=None,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            return ABNORMAL, type(exc).__name__
        self._ws = ws
        self._writes = asyncio.Queue()
        self._drop = asyncio.Event()
        writer = asyncio.ensure_future(self._writer(ws, self._writes))
        reader = asyncio.ensure_future(self._reader(ws))
        dropper = asyncio.ensure_future(self._drop.wait())
        beat = asyncio.ensure_future(self._heartbeat())
        unwelcomed = asyncio.ensure_future(self._no_welcome_within(self.connect_timeout))
        try:
            done, _ = await asyncio.wait({reader, dropper, writer, unwelcomed}, return_when=asyncio.FIRST_COMPLETED)
            if dropper in done:
                self.close_code, self.close_reason = ABNORMAL, "dropped by client"
                ws.transport.abort()  # no close handshake: like a cut cable
            elif unwelcomed in done:
                self.close_code, self.close_reason = ABNORMAL, "no welcome"
                ws.transport.abort()
        finally:
            self._ws = None
            self._writes = None
            for task in (writer, reader, dropper, beat, unwelcomed):
                task.cancel()
            await asyncio.gather(writer, reader, dropper, beat, unwelcomed, return_exceptions=True)
        if self.close_code is None:
            rcvd = ws.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else ABNORMAL
            self.close_reason = rcvd.reason if rcvd is not None else ""
        return self.close_code, self.close_reason

    async def _writer(self, ws: ClientConnection, queue: asyncio.Queue[str]) -> None:
        while True:
            text = await queue.get()
            await ws.send(text)

    async def _reader(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                if isinstance(data, str):
                    self._on_frame(data)
        except ConnectionClosed:
            pass

    async def _no_welcome_within(self, seconds: float) -> None:
        """Returns if the socket is not in the room ``seconds`` after it
        opened (the JS client's ``connectTimeoutMs`` rule): a socket the
        server accepted but never welcomed would otherwise wait for good,
        its pings answered. Once welcomed, it waits until cancelled."""
        try:
            await asyncio.wait_for(self._open_event.wait(), seconds)
        except TimeoutError:
            return
        await asyncio.Event().wait()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if self.state == OPEN:
                # One frame a period: the server takes a ping as a heartbeat
                # too (presence).
                self.ping()

    def _stop(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
        pending = list(self._outbox.values())
        self._outbox.clear()
        self._set_state(CLOSED, code=code, reason=reason, terminal=code in TERMINAL_CODES or code == UNAUTHORIZED)
        for m in pending:
            if not m.future.done():
                m.future.set_exception(DormError("closed", reason, id=m.id, code=code))

    # -- inbound ----------------------------------------------------------------

    def _on_frame(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        self._emit("*", frame)
        type_ = frame.get("type")
        if type_ == "welcome":
            self._on_welcome(frame)
            return
        if type_ == "ack":
            self._on_ack(frame)
            return
        if type_ == "error":
            self._on_error(frame)
            return
        if type_ == "pong":
            t = (frame.get("payload") or {}).get("t")
            if isinstance(t, (int, float)):
                self.latency_ms = max(0.0, time.monotonic() * 1000 - t)
                self._emit("latency", {"ms": self.latency_ms})
            return
        if type_ == "close":
            self.close_code, self.close_reason = frame.get("code"), frame.get("reason") or ""
            self._emit("close", frame)
            return
        if type_ == "rate_limited":
            # One frame was dropped: pause, then resend it. Its `id` says
            # which; without one every unacknowledged message is resent (ids
            # make that safe).
            wait = (frame.get("retryAfterMs") or 250) / 1000
            self._paused_until = time.monotonic() + wait
            if "id" in frame:
                dropped = self._outbox.get(str(frame["id"]))
                if dropped is not None:
                    dropped.sent = False
            else:
                for m in self._outbox.values():
                    m.sent = False
            asyncio.get_running_loop().call_later(wait, self._flush)
            self._emit("rate_limited", frame)
            return
        if type_ == "user_joined":
            if not any(m["userId"] == frame.get("userId") for m in self.members):
                self.members = [*self.members, {"userId": frame["userId"], "status": "online"}]
                self._emit("members", self.members)
        elif type_ == "user_left":
            self.members = [m for m in self.members if m["userId"] != frame.get("userId")]
            self._emit("members", self.members)
        elif type_ == "presence":
            status = (frame.get("payload") or {}).get("status")
            if isinstance(status, str):
                others = [m for m in self.members if m["userId"] != frame.get("userId")]
                self.members = [*others, {"userId": frame["userId"], "status": status}]
                self._emit("members", self.members)
        seq = frame.get("seq")
        if isinstance(seq, int) and not self._mark_seen(seq):
            return  # already delivered
        self._emit(str(type_), frame)

    def _mark_seen(self, seq: int) -> bool:
        if self.last_seq is not None and seq <= self.last_seq:
            return False
        if seq in self._seen_above:
            return False
        self._seen_above.add(seq)
        last = self.last_seq or 0
        while last + 1 in self._seen_above:
            self._seen_above.discard(last + 1)
            last += 1
        self.last_seq = last
        return True

    def _on_welcome(self, frame: dict[str, Any]) -> None:
        self.kind = frame.get("kind")
        self.connection_id = frame.get("connectionId")
        self.user_id = frame.get("userId") or self.user_id
        if not frame.get("resumed"):
            self.last_seq = frame.get("seq", 0)
            self._seen_above.clear()
            self._emit("reset", {"state": frame.get("state"), "seq": frame.get("seq")})
        self.members = [dict(m) for m in frame.get("presence") or []]
        self._attempt = 0
        self._set_state(OPEN, resumed=bool(frame.get("resumed")), seq=frame.get("seq"))
        self._open_event.set()
        self._emit("welcome", frame)
        self._emit("members", self.members)
        self.ping()
        if self._presence_status:
            self._raw({"type": "presence", "payload": {"status": self._presence_status}})
        for m in self._outbox.values():
            m.sent = False
        self._flush()

    def _on_ack(self, frame: dict[str, Any]) -> None:
        seq = frame.get("seq")
        if isinstance(seq, int):
            self._mark_seen(seq)
        m = self._outbox.pop(str(frame.get("id")), None)
        if m is None:
            return  # a second ack of a retried message
        ack = {"id": m.id, "seq": seq, "type": m.type, "payload": m.payload}
        if not m.future.done():
            m.future.set_result(ack)
        self._emit("ack", ack)

    def _on_error(self, frame: dict[str, Any]) -> None:
        m = self._outbox.get(str(frame.get("id"))) if frame.get("id") is not None else None
        if m is None:
            self._emit("error", frame)
            return
        if frame.get("reason") == "internal" and m.internal_retries < self.internal_retries:
            m.internal_retries += 1  # the commit failed: nothing applied, retry with the same id
            m.sent = False
            asyncio.get_running_loop().call_later(backoff_delay(m.internal_retries, self.backoff_base, 5.0, self.random), self._flush)
            return
        del self._outbox[m.id]
        err = DormError(frame.get("reason", "error"), frame.get("detail"), id=m.id, type=m.type)
        if not m.future.done():
            m.future.set_exception(err)
        self._emit("reject", {"id": m.id, "type": m.type, "payload": m.payload, "reason": err.reason, "detail": err.detail, "error": err})

    # -- outbound -----------------------------------------------------------------

    def next_id(self) -> str:
        return f"{self._tag}-{next(self._ids)}"

    def send(self, type_: str, payload: Any = None, *, id: str | None = None, optimistic: bool = False) -> SendHandle:
        """Send with an id: queued while offline, resent with the same id until acknowledged."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        msg = _Outgoing(id or self.next_id(), type_, payload, future)
        if self.state == CLOSED:
            future.set_exception(DormError("closed", "the client is closed", id=msg.id))
            return SendHandle(msg.id, future)
        self._outbox[msg.id] = msg
        if optimistic:
            self._emit(type_, {"type": type_, "id": msg.id, "userId": self.user_id, "payload": payload, "pending": True})
        self._flush()
        return SendHandle(msg.id, future)

    def send_volatile(self, type_: str, payload: Any = None) -> bool:
        """Fire and forget (cursors, typing): written only if the room is open now."""
        if self.state != OPEN:
            return False
        return self._raw({"type": type_} if payload is None else {"type": type_, "payload": payload})

    def set_presence(self, status: str) -> bool:
        """This client's presence status, kept and re-sent after reconnects."""
        self._presence_status = status
        return self.send_volatile("presence", {"status": status})

    def ping(self) -> bool:
        return self._raw({"type": "ping", "payload": {"t": round(time.monotonic() * 1000, 3)}})

    @property
    def pending(self) -> list[dict[str, Any]]:
        return [{"id": m.id, "type": m.type, "payload": m.payload} for m in self._outbox.values()]

    def _flush(self) -> None:
        if self.state != OPEN:
            return
        paused = self._paused_until - time.monotonic()
        if paused > 0:  # a timer fired early, or a send during the pause
            asyncio.get_running_loop().call_later(paused + 0.001, self._flush)
            return
        for m in self._outbox.values():
            if m.sent:
                continue
            frame: dict[str, Any] = {"type": m.type, "id": m.id}
            if m.payload is not None:
                frame["payload"] = m.payload
            if not self._raw(frame):
                return
            m.sent = True

    def _raw(self, frame: dict[str, Any]) -> bool:
        if self._writes is None:
            return False
        self._writes.put_nowait(json.dumps(frame, separators=(",", ":")))
        return True
