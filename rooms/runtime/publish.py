"""Server-side publish: the REST API's one door into the room runtime.

A REST publish is handled exactly like a WebSocket frame: it is a
:class:`~rooms.runtime.messages.Frame` in the room's actor inbox, so it gets
the same validation, ``seq``, de-duplication per ``(userId, id)``, group
commit and output gate, and it is ordered with the room's WebSocket traffic.
Its peer is a :class:`ServerPeer` whose ``reply``/``error`` resolve a future
instead of writing to a socket.

Everything the API needs from the runtime goes through this module, so the
distributed mode can route it to the process that owns the room.

Must run on the event loop that hosts the actors: under daphne/uvicorn a sync
DRF view reaches it with ``asgiref.sync.async_to_sync``, which (called from
the thread Django runs sync views in) schedules the coroutine on the server's
loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
from typing import Any

import orjson
from asgiref.sync import async_to_sync

from rooms.protocol import ErrorReason
from rooms.runtime.connection import SCOPE_RANK
from rooms.runtime.messages import Frame
from rooms.runtime.registry import get_runtime

log = logging.getLogger("dorm.rooms")

# How long a publisher waits for its ack. The actor acks after the group
# commit, which takes milliseconds; past this the room is stuck or restarting
# and the caller should retry with the same idempotency key.
ACK_TIMEOUT_SECONDS = 10.0


class PublishError(Exception):
    """The room refused the message; ``reason`` is the protocol's error reason."""

    reason = ErrorReason.INTERNAL

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail


class UnknownType(PublishError):
    reason = ErrorReason.UNKNOWN_TYPE


class InvalidMessage(PublishError):
    reason = ErrorReason.INVALID_MESSAGE


class TooLarge(PublishError):
    reason = ErrorReason.TOO_LARGE


class Forbidden(PublishError):
    reason = ErrorReason.FORBIDDEN


class Unavailable(PublishError):
    """The room could not commit (or did not answer in time): retry later."""

    reason = ErrorReason.INTERNAL


_ERRORS: dict[str, type[PublishError]] = {
    ErrorReason.UNKNOWN_TYPE: UnknownType,
    ErrorReason.INVALID_MESSAGE: InvalidMessage,
    ErrorReason.TOO_LARGE: TooLarge,
    ErrorReason.FORBIDDEN: Forbidden,
}

# The actor reports an oversized payload as invalid_message with this detail
# prefix (actor._on_frame); the API tells it apart to answer 413.
_TOO_LARGE_DETAIL = "payload: larger than"


class ServerPeer:
    """A peer with no socket: the actor's answer resolves ``future``."""

    def __init__(self, user_id: str, scope: str, future: asyncio.Future[dict[str, Any]]) -> None:
        self.id = "srv-" + secrets.token_urlsafe(9)
        self.user_id = user_id
        self.scope = scope
        self.refused = False
        self._future = future

    @property
    def closed(self) -> bool:
        # Never "closed": the actor must still answer after the caller timed
        # out, so the ack is not lost for the de-duplication window.
        return False

    def may_send(self, required_scope: str) -> bool:
        return SCOPE_RANK[self.scope] >= SCOPE_RANK[required_scope]

    async def open(self, welcome: str, seq: int, replay: list[str]) -> None:
        """Never called: a server peer never joins the room."""

    async def send_bytes(self, data: bytes) -> None:
        """Nothing to a REST caller: binary frames are for sockets."""

    async def reply(self, text: str) -> None:
        frame = orjson.loads(text)
        if frame.get("type") == "ack" and not self._future.done():
            self._future.set_result(frame)

    async def error(
        self, reason: str, client_id: str | None = None, detail: str | None = None, code: str | None = None
    ) -> None:
        if self._future.done():
            return
        if reason == ErrorReason.INVALID_MESSAGE and (detail or "").startswith(_TOO_LARGE_DETAIL):
            exc: PublishError = TooLarge(detail or "")
        else:
            exc = _ERRORS.get(reason, Unavailable)(detail or "")
        self._future.set_exception(exc)

    async def close(self, code: int, reason: str) -> None:
        if not self._future.done():
            self._future.set_exception(Unavailable(reason))


async def publish(
    room: str,
    user_id: str,
    type_: str,
    payload: Any,
    client_id: str | None,
    *,
    scope: str = "host",
) -> dict[str, Any]:
    """Publish one message to ``room`` as ``user_id`` through its actor.

    Returns the ack ``{"type": "ack", "id", "seq"}`` (no ``seq`` for ephemeral
    types) once the event is committed and broadcast. A retry with the same
    ``client_id`` within the de-duplication window is acknowledged with the
    first ``seq`` and applied once. Raises a :class:`PublishError`.
    """
    # The actor only acks messages that carry an id, so one is always sent; a
    # generated one is unique and never retried.
    frame_id = client_id if client_id is not None else "srv-" + secrets.token_urlsafe(12)
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    peer = ServerPeer(user_id, scope, future)
    # Submit from an empty context: an actor woken here starts a task that
    # copies the current context, and the caller's (a request's) holds
    # asgiref's per-request executor, which dies with the request; the actor
    # would then route its database calls to a dead thread. WebSocket-woken
    # actors start from a clean context too.
    contextvars.Context().run(get_runtime().registry.submit, room, Frame(peer, type_, frame_id, payload))
    try:
        ack = await asyncio.wait_for(asyncio.shield(future), ACK_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("publish timed out room=%s user=%s type=%s", room, user_id, type_)
        raise Unavailable(f"the room did not acknowledge within {ACK_TIMEOUT_SECONDS:g} s; retry with the same key") from None
    except PublishError as exc:
        log.info("publish refused room=%s user=%s type=%s reason=%s", room, user_id, type_, exc.reason)
        raise
    log.info("publish room=%s user=%s type=%s seq=%s", room, user_id, type_, ack.get("seq"))
    return ack


def connection_count(room: str) -> int:
    """Live (fresh: heard from within the presence TTL) connections of ``room``.

    The presence backend is async (Redis in the distributed mode): called
    from a sync view, this runs on the server's loop like ``publish``.
    """
    return int(async_to_sync(get_runtime().presence.count)(room))
