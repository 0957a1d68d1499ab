"""A small Dorm client for the end-to-end tests, on ``websockets``' asyncio client.

Every client reads its socket in a background task and keeps every frame it
received (``frames``), so a test can wait for a specific frame
(``recv_until``), for a number of matching frames (``wait_for``), or look back
at everything afterwards. Every wait has a timeout: no test can hang on a
frame that never comes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

if TYPE_CHECKING:
    from tests.e2e.server import DormServer

Frame = dict[str, Any]
Pred = Callable[[Frame], bool]

DEFAULT_TIMEOUT = 10.0
NO_PAYLOAD: Any = object()

# Close codes every client of the session received from a server (None: the
# TCP connection ended without a close frame). The suite checks 1011 never
# appears (PROTOCOL.md section 1).
OBSERVED_CLOSE_CODES: list[tuple[str, int | None]] = []


def room_name(prefix: str = "e2e") -> str:
    """A room id no other test uses (the servers are shared by the session)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def _short(frame: Frame, limit: int = 200) -> str:
    text = repr(frame)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


class Connect(Protocol):
    """The ``connect`` fixture: ``await connect(server, room, "u1", since=5)``."""

    def __call__(
        self,
        server: DormServer,
        room: str,
        user: str | None = ...,
        *,
        since: int | str | None = ...,
        expect_welcome: bool = ...,
        **query: Any,
    ) -> Awaitable[WsClient]: ...


# -- predicates ------------------------------------------------------------------


def of_type(*types: str) -> Pred:
    return lambda f: f.get("type") in types


def ack_for(client_id: str) -> Pred:
    return lambda f: f.get("type") == "ack" and f.get("id") == client_id


def reply_for(client_id: str) -> Pred:
    """The ack or error answering the message with this id."""
    return lambda f: f.get("type") in ("ack", "error") and f.get("id") == client_id


def event(type_: str = "draw") -> Pred:
    """A broadcast durable event (it has a seq)."""
    return lambda f: f.get("type") == type_ and "seq" in f


PRESENCE_UPDATE_TYPES = ("user_joined", "user_left", "presence", "presence_diff")


def announced(updates: Iterable[Frame]) -> tuple[set[str], set[str]]:
    """The users that presence updates announce as joined, and as left."""
    joined: set[str] = set()
    left: set[str] = set()
    for f in updates:
        if f["type"] == "presence_diff":
            joined |= {j["userId"] for j in f["joined"]}
            left |= {j["userId"] for j in f["left"]}
        elif f["type"] == "user_joined":
            joined.add(f["userId"])
        elif f["type"] == "user_left":
            left.add(f["userId"])
    return joined, left


def durable_event(f: Frame) -> bool:
    return f.get("type") not in ("ack", "error", "welcome") and isinstance(f.get("seq"), int)


class WsClient:
    """One WebSocket connection to a Dorm room."""

    def __init__(self, ws: ClientConnection, url: str, name: str) -> None:
        self.ws = ws
        self.url = url
        self.name = name
        self.frames: list[Frame] = []
        self.received_at: list[float] = []  # time.monotonic() of each frame in ``frames``
        self.welcome: Frame = {}
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.closed = asyncio.Event()
        self._new = asyncio.Event()
        self._cursor = 0
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"ws-reader:{name}")

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        expect_welcome: bool = True,
        name: str = "",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> WsClient:
        ws = await asyncio.wait_for(
            connect(
                url,
                proxy=None,
                open_timeout=timeout,
                close_timeout=3,
                ping_interval=None,
                max_size=16 * 1024 * 1024,
            ),
            timeout + 1,
        )
        client = cls(ws, url, name or url.rsplit("/", 1)[-1])
        if expect_welcome:
            first = await client.recv_until(lambda f: True, timeout)
            assert first.get("type") == "welcome", f"{client.name}: first frame is not welcome: {first}"
            client.welcome = first
        return client

    # -- reading --------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                data = await self.ws.recv()
                if isinstance(data, bytes):
                    frame: Frame = {"type": "_binary", "bytes": data}
                else:
                    try:
                        parsed = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        parsed = None
                    frame = parsed if isinstance(parsed, dict) else {"type": "_not_a_json_object", "raw": data}
                self.received_at.append(time.monotonic())
                self.frames.append(frame)
                self._new.set()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            self.close_code = rcvd.code if rcvd is not None else None
            self.close_reason = rcvd.reason if rcvd is not None else ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - surfaced through the waits
            self.close_reason = f"reader failed: {exc!r}"
        finally:
            if not self.closed.is_set():
                OBSERVED_CLOSE_CODES.append((self.name, self.close_code))
            self.closed.set()
            self._new.set()

    def _context(self, n: int = 8) -> str:
        tail = [_short(f) for f in self.frames[-n:]]
        return f"{self.name}: {len(self.frames)} frames, last {len(tail)}: {tail}; closed={self.closed.is_set()} code={self.close_code}"

    async def _wait_new(self, deadline: float) -> bool:
        """Wait until a frame arrives or the socket closes; False at the deadline."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        self._new.clear()
        try:
            await asyncio.wait_for(self._new.wait(), remaining)
        except TimeoutError:
            return False
        return True

    async def recv_until(self, pred: Pred, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame (after the last one returned here) that matches ``pred``.

        Frames skipped on the way stay in ``frames``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self._cursor < len(self.frames):
                frame = self.frames[self._cursor]
                self._cursor += 1
                if pred(frame):
                    return frame
            if self.closed.is_set():
                raise AssertionError(f"socket closed while waiting for a frame; {self._context()}")
            if not await self._wait_new(deadline):
                raise AssertionError(f"no matching frame within {timeout} s; {self._context()}")

    async def wait_for(self, pred: Pred, count: int = 1, timeout: float = DEFAULT_TIMEOUT) -> list[Frame]:
        """Every frame received so far matching ``pred``, once there are at least ``count``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [f for f in self.frames if pred(f)]
            if len(found) >= count:
                return found
            if self.closed.is_set():
                raise AssertionError(f"socket closed with {len(found)}/{count} matching frames; {self._context()}")
            if not await self._wait_new(deadline):
                raise AssertionError(f"{len(found)}/{count} matching frames after {timeout} s; {self._context()}")

    def matching(self, pred: Pred) -> list[Frame]:
        return [f for f in self.frames if pred(f)]

    def events(self, type_: str | None = None) -> list[Frame]:
        """Durable events received (broadcasts with a seq), optionally of one type."""
        return [f for f in self.frames if durable_event(f) and (type_ is None or f["type"] == type_)]

    def mark(self) -> int:
        """The number of frames received so far (for ``since_mark``)."""
        return len(self.frames)

    def since_mark(self, mark: int) -> list[Frame]:
        return self.frames[mark:]

    def presence_updates_since(self, mark: int) -> list[tuple[float, Frame]]:
        """The presence updates received after ``mark``, each with its arrival time."""
        return [
            (at, f)
            for at, f in zip(self.received_at[mark:], self.frames[mark:])
            if f.get("type") in PRESENCE_UPDATE_TYPES
        ]

    async def expect_quiet(self, pred: Pred, window: float, mark: int | None = None) -> None:
        """Nothing matching ``pred`` arrives (after ``mark``) during ``window`` seconds.

        Time-based by nature; prefer a barrier frame where one exists.
        """
        start = self.mark() if mark is None else mark
        await asyncio.sleep(window)
        unexpected = [f for f in self.frames[start:] if pred(f)]
        assert not unexpected, f"{self.name}: unexpected frames {unexpected}"

    # -- sending --------------------------------------------------------------

    async def send(self, type_: str, payload: Any = NO_PAYLOAD, id: str | None = None) -> None:
        frame: dict[str, Any] = {"type": type_}
        if id is not None:
            frame["id"] = id
        if payload is not NO_PAYLOAD:
            frame["payload"] = payload
        await self.send_raw(orjson.dumps(frame).decode())

    async def send_raw(self, data: str | bytes) -> None:
        await asyncio.wait_for(self.ws.send(data), DEFAULT_TIMEOUT)

    async def request(
        self, type_: str, payload: Any = NO_PAYLOAD, id: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Frame:
        """Send a message with an id and return its ack or error."""
        client_id = id or f"r-{uuid.uuid4().hex[:12]}"
        mark = self.mark()
        await self.send(type_, payload, client_id)
        return await self.wait_reply(client_id, timeout, after=mark)

    async def wait_reply(self, client_id: str, timeout: float = DEFAULT_TIMEOUT, after: int = 0) -> Frame:
        """The first ack/error for ``client_id`` among the frames from index ``after`` on
        (a retried id is answered again: look only past the retry)."""
        matches = reply_for(client_id)
        found = await self.wait_for(lambda f: matches(f) and self._index_of(f) >= after, 1, timeout)
        return found[0]

    def _index_of(self, frame: Frame) -> int:
        for i in range(len(self.frames) - 1, -1, -1):
            if self.frames[i] is frame:
                return i
        return -1

    async def draw(self, payload: dict[str, Any], id: str | None = None) -> int:
        """Send a draw and return the seq of its ack (fails on an error reply)."""
        reply = await self.request("draw", payload, id)
        assert reply["type"] == "ack" and isinstance(reply.get("seq"), int), f"{self.name}: {reply}"
        return int(reply["seq"])

    # -- closing --------------------------------------------------------------

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait for the server to close; the close code received (None: no close frame)."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"server did not close within {timeout} s; {self._context()}") from None
        return self.close_code

    def assert_open(self) -> None:
        assert not self.closed.is_set(), f"socket unexpectedly closed; {self._context()}"

    async def close(self, code: int = 1000) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code), 5)
        except (TimeoutError, ConnectionClosed, OSError):
            pass
        await self._stop_reader()

    async def drop(self) -> None:
        """Close the TCP connection without a closing handshake (a FIN, as
        from a client whose page or process ended; ``abort`` sends a RST)."""
        transport = self.ws.transport
        if transport is not None:
            transport.close()
        await self._stop_reader()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    async def _stop_reader(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        except TimeoutError:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self.closed.set()
