"""Write a pre-framed WebSocket message straight to a socket's transport.

Fan-out sends the same event to every socket of a room. Through the ASGI
``send`` callable each recipient costs a trip through the server's WebSocket
stack (daphne: autobahn builds, logs and writes the frame; ~10 us of Python).
Here the frame is built once per event (server frames are unmasked, so the
bytes are identical for every recipient) and each recipient costs one
``transport.write``.

This reaches into the server's protocol object, so it is used only where it
is known to be correct: daphne (autobahn) and uvicorn's ``websockets``
implementation, on an open socket with no fragmentation configured. An
uncompressed frame is valid even when permessage-deflate was negotiated
(RFC 7692 section 6: compression is per message, RSV1 says which). Anything
else falls back to the ASGI ``send``; ordering is kept because both paths
write synchronously to the same transport.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

FrameWriter = Callable[[bytes], bool]


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
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - daphne is a requirement
        return None
    if not (isinstance(send, functools.partial) and send.args and isinstance(send.args[0], WebSocketProtocol)):
        return None
    proto = send.args[0]
    if getattr(proto, "autoFragmentSize", 0):
        return None
    open_state = proto.STATE_OPEN

    def write(frame: bytes) -> bool:
        if proto.state != open_state or proto._perMessageCompress is not None:
            return False
        proto.transport.write(frame)
        return True

    return write


def _uvicorn_websockets_writer(send: Any) -> FrameWriter | None:
    proto = getattr(send, "__self__", None)
    # Look before importing: the module warns about its own deprecation.
    if proto is None or type(proto).__module__ != "uvicorn.protocols.websockets.websockets_impl":
        return None
    try:
        from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol
        from websockets.protocol import State
    except ImportError:
        return None
    if not isinstance(proto, WebSocketProtocol):
        return None
    open_state = State.OPEN

    def write(frame: bytes) -> bool:
        if proto.state is not open_state or not proto.handshake_completed_event.is_set():
            return False
        proto.transport.write(frame)
        return True

    return write


def direct_writer(send: Any) -> FrameWriter | None:
    """A frame writer for this ASGI ``send``, or None where only ``send`` is safe."""
    return _daphne_writer(send) or _uvicorn_websockets_writer(send)
