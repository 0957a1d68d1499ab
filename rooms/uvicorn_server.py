"""uvicorn's WebSocket protocol, without a reference cycle per closed socket.

uvicorn's ``websockets-sansio`` protocol (its default, and ``make
run-uvicorn``'s) keeps websockets' state machine (``ServerProtocol``) for
each socket. The state machine parses with a generator that refers back to
it, so it, its parser generators, the handshake request with its headers and
its stream reader (~20 objects) form a reference cycle until the parser
finishes, which a closing handshake does and a TCP close without one (a
client that vanished, a dropped network, a load generator) does not. Only
the cyclic collector frees such a cycle, and in a process that freezes what
survives its full collections (``rooms/runtime/gc_freeze.py``) only the
thaw, every ``DORM_GC_THAW_SECONDS``: 15,000 sockets dropped and back held
~64 MiB more (docs/performance.md, "Sixteenth round").

``install`` wraps the protocol's ``connection_lost``: once the socket is gone
nothing more is parsed (asyncio calls nothing on a protocol after it), so
the parser is closed, which ends the cycle and lets reference counting free
the rest.
"""

from __future__ import annotations

import sys
from typing import Any

SANSIO_MODULE = "uvicorn.protocols.websockets.websockets_sansio_impl"


def close_parser(protocol: Any) -> None:
    """End websockets' parser of a uvicorn protocol whose socket is gone."""
    parser = getattr(getattr(protocol, "conn", None), "parser", None)
    close = getattr(parser, "close", None)  # a generator
    if close is not None:
        close()


def install() -> bool:
    """Wrap ``connection_lost`` of uvicorn's sansio protocol, if uvicorn
    serves with it (it imports only the protocol of its ``--ws``); True if
    the protocol is (now) wrapped."""
    module = sys.modules.get(SANSIO_MODULE)
    if module is None:
        return False
    protocol_class = module.WebSocketsSansIOProtocol
    original = protocol_class.connection_lost
    if getattr(original, "closes_parser", False):
        return True

    def connection_lost(self: Any, exc: Exception | None) -> None:
        try:
            original(self, exc)
        finally:
            close_parser(self)

    connection_lost.closes_parser = True  # type: ignore[attr-defined]
    connection_lost.__wrapped__ = original  # type: ignore[attr-defined]
    protocol_class.connection_lost = connection_lost
    return True
