"""Write a pre-framed WebSocket message straight to a socket's transport.

Fan-out sends the same event to every socket of a room. Through the ASGI
``send`` callable each recipient costs a trip through the server's WebSocket
stack (daphne: autobahn builds, logs and writes the frame; ~10 us of Python).
Here the frame is built once per event (server frames are unmasked, so the
bytes are identical for every recipient) and each recipient costs one
``transport.write``.

This reaches into the server's protocol object, so it is used only where it
is known to be correct: daphne (autobahn) and uvicorn's two ``websockets``
implementations (``websockets-sansio``, its default, and the legacy one),
on an open socket with no fragmentation configured. An uncompressed frame
is valid even when permessage-deflate was negotiated (RFC 7692 section 6:
compression is per message, RSV1 says which). Anything else falls back to
the ASGI ``send``; ordering is kept because both paths write synchronously
to the same transport.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from rooms.runtime.app_queue import ApplicationQueue

# What a frame writer did: NOT_WRITTEN (use the ASGI ``send``), SENT (the
# socket took every byte) or QUEUED (bytes wait in the server's transport: the
# backpressure watch must look at this socket).
NOT_WRITTEN, SENT, QUEUED = 0, 1, 2
FrameWriter = Callable[[bytes], int]


def text_frame(text: str) -> bytes:
    """One unfragmented, unmasked text frame (RFC 6455 section 5.2)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def _daphne_writer(send: Any) -> FrameWriter | None:
    proto = _daphne_protocol(send)
    if proto is None:
        return None
    if getattr(proto, "autoFragmentSize", 0):
        return None
    open_state = proto.STATE_OPEN

    def write(frame: bytes) -> int:
        if proto.state != open_state or proto._perMessageCompress is not None:
            return NOT_WRITTEN
        return twisted_write(proto.transport, frame)

    return write


def twisted_write(transport: Any, data: bytes) -> int:
    """Write to a twisted transport, sending at once what the socket takes
    when nothing is queued before it (``_twisted_idle_tcp``); SENT or QUEUED."""
    if _twisted_idle_tcp(transport):
        data = _send_now(transport.socket, data)
        if not data:
            return SENT
    transport.write(data)
    return QUEUED


def _twisted_idle_tcp(transport: Any) -> bool:
    """A plain (not TLS) twisted TCP transport with nothing queued to send.

    twisted's ``write`` never sends at once: it queues the bytes, registers
    the socket for writability (an ``epoll_ctl``), sends on the next reactor
    turn, then unregisters (another one). For fan-out that is most of the
    cost of each recipient (~40 % of the server's time in the connection
    benchmark, where every join is announced to the room). When nothing is
    queued, sending at once is what twisted would do next anyway, in the same
    order; anything already queued must go first, so then this says no.
    """
    try:
        return (
            not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and not transport.TLS
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
        )
    except AttributeError:  # not twisted.internet.tcp's Connection: leave it to write()
        return False


def _send_now(sock: Any, frame: bytes) -> bytes:
    """Send what the socket takes now; return the rest (b"" when all went)."""
    try:
        sent = sock.send(frame)
    except (BlockingIOError, InterruptedError):
        return frame
    except OSError:
        # A reset or closed socket: twisted's own write finds and reports it.
        return frame
    return frame[sent:] if sent < len(frame) else b""


def _uvicorn_websockets_writer(send: Any) -> FrameWriter | None:
    """uvicorn's ``--ws websockets-sansio`` (its default), or its
    older ``--ws websockets`` (websockets' deprecated legacy protocol)."""
    from rooms.uvicorn_server import LEGACY_MODULE, SANSIO_MODULE

    proto = getattr(send, "__self__", None)
    # By module name first: importing the legacy module would warn about its
    # deprecation; a protocol's class is loaded, so its module is there.
    module = sys.modules.get(type(proto).__module__) if proto is not None else None
    if module is None or module.__name__ not in (SANSIO_MODULE, LEGACY_MODULE):
        return None
    from websockets.protocol import State

    open_state = State.OPEN
    if module.__name__ == SANSIO_MODULE and isinstance(proto, module.WebSocketsSansIOProtocol):
        conn = proto.conn  # websockets' sans-I/O state machine; uvicorn sends whole messages, never fragments

        def sansio_write(frame: bytes) -> int:
            # The same checks as its ``send`` for a message: accepted, not
            # closing, not answering the handshake with an HTTP response.
            if (
                conn.state is not open_state
                or not proto.handshake_complete
                or proto.close_sent
                or proto.disconnected
                or proto.initial_response is not None
            ):
                return NOT_WRITTEN
            return _asyncio_write(proto.transport, frame)

        return sansio_write
    if module.__name__ == LEGACY_MODULE and isinstance(proto, module.WebSocketProtocol):

        def legacy_write(frame: bytes) -> int:
            if proto.state is not open_state or not proto.handshake_completed_event.is_set():
                return NOT_WRITTEN
            return _asyncio_write(proto.transport, frame)

        return legacy_write
    return None


def _asyncio_write(transport: Any, frame: bytes) -> int:
    transport.write(frame)  # asyncio sends at once what the socket takes
    return QUEUED if transport.get_write_buffer_size() else SENT


def direct_writer(send: Any) -> FrameWriter | None:
    """A frame writer for this ASGI ``send``, or None where only ``send`` is safe."""
    return _daphne_writer(send) or _uvicorn_websockets_writer(send)


async def close_socket(send: Any, code: int, reason: str = "") -> None:
    """Close an accepted socket with ``code`` and ``reason``, on any server.

    daphne passes ``websocket.close`` to autobahn's ``sendClose``, which
    refuses every code outside 1000 and 3000-4999 (so 1001, 1008, 1009 and
    1013 would never reach the client) and daphne drops the reason. On daphne
    the close frame goes through autobahn's ``sendCloseFrame`` instead, which
    runs the same closing handshake without that check. Elsewhere the ASGI
    message carries both.
    """
    proto = _daphne_protocol(send)
    if proto is not None and proto.state == proto.STATE_OPEN:
        reason_bytes = reason.encode()[:123] if reason else None
        proto.sendCloseFrame(code=int(code), reasonUtf8=reason_bytes, isReply=False)
        return
    await send({"type": "websocket.close", "code": int(code), "reason": reason})


def _daphne_protocol(send: Any) -> Any:
    if not (isinstance(send, functools.partial) and send.args):
        return None
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - daphne is a requirement
        return None
    proto = send.args[0]
    return proto if isinstance(proto, WebSocketProtocol) else None


def close_cleanly_on_protocol_errors(send: Any) -> None:
    """Make daphne answer its own protocol failures with a close frame.

    autobahn "fails" a connection (a message over daphne's
    ``--websocket-max-message-size``, a protocol violation) by dropping the
    TCP connection (``failByDrop``), so the client sees 1006 instead of the
    1009 of PROTOCOL.md. Without it autobahn runs the closing handshake with
    the code it chose. Set per socket because daphne's command line cannot.
    """
    proto = _daphne_protocol(send)
    if proto is not None:
        proto.failByDrop = False


def answer_at_edge(send: Any, answer: Callable[[str], bool] | None) -> bool:
    """Have the server call ``answer(text)`` with each small text message of
    this socket as it reads it; a message it returns True for is answered
    and not queued for the application (None stops it).

    ``answer`` runs in the server's read, on the event loop, before any later
    message of the socket is queued. Only Dorm's daphne protocol
    (``rooms/daphne_server.LeanFrames``) and uvicorn's sans-I/O one as
    ``rooms/uvicorn_server`` wraps it can do this; False elsewhere, where
    every message comes through ``receive``.
    """
    proto = _daphne_protocol(send)
    if proto is None:
        proto = getattr(send, "__self__", None)
    if proto is None or not hasattr(type(proto), "edge_answer"):
        return False
    proto.edge_answer = answer
    return True


def application_queue(receive: Any) -> ApplicationQueue | None:
    """The queue this ASGI ``receive`` reads, where it is Dorm's
    ``ApplicationQueue`` (daphne's, and uvicorn's sans-I/O protocol's as
    ``rooms/uvicorn_server`` wraps it): whether the application's task has
    nothing of the socket's in hand (``awaited_empty``) can be asked."""
    owner = getattr(receive, "__self__", None)
    queue = owner if isinstance(owner, ApplicationQueue) else getattr(owner, "queue", None)
    return queue if isinstance(queue, ApplicationQueue) else None


def outbound_meter(send: Any) -> Callable[[], int] | None:
    """A function giving the bytes queued for this socket and not yet sent.

    What a slow client has not read piles up in the server's transport; the
    backpressure watch (backpressure.py) reads it to bound memory per socket.
    None where the server's transport is unknown.
    """
    proto = _daphne_protocol(send)
    if proto is not None:
        transport = proto.transport

        def twisted_buffered() -> int:
            # twisted.internet.abstract.FileDescriptor's write buffer.
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

        return twisted_buffered
    proto = getattr(send, "__self__", None)
    transport = getattr(proto, "transport", None)
    if transport is not None and hasattr(transport, "get_write_buffer_size"):
        return transport.get_write_buffer_size  # type: ignore[no-any-return]
    return None


def abort_socket(send: Any) -> None:
    """Drop the TCP connection at once (a client that will not read its close)."""
    proto = _daphne_protocol(send)
    if proto is None:
        proto = getattr(send, "__self__", None)
    transport = getattr(proto, "transport", None)
    if transport is None:
        return
    if hasattr(transport, "abortConnection"):
        transport.abortConnection()
    elif hasattr(transport, "abort"):
        transport.abort()
