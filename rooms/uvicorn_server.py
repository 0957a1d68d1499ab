"""uvicorn's WebSocket protocol: no reference cycle per closed socket, less
memory per open one.

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

It also makes each idle socket smaller, as ``rooms/daphne_server.py`` does
for daphne's: the application's queue is an ``ApplicationQueue`` instead of
an ``asyncio.Queue`` (~3.2 KB), and the handshake's request and response
(their headers) are let go once the socket is accepted, when the protocol
starts its keepalive; nothing reads them after that.
"""

from __future__ import annotations

import sys
from typing import Any

from rooms.runtime.app_queue import ApplicationQueue

SANSIO_MODULE = "uvicorn.protocols.websockets.websockets_sansio_impl"


def close_parser(protocol: Any) -> None:
    """End websockets' parser of a uvicorn protocol whose socket is gone."""
    parser = getattr(getattr(protocol, "conn", None), "parser", None)
    close = getattr(parser, "close", None)  # a generator
    if close is not None:
        close()


def install() -> bool:
    """Wrap uvicorn's sans-I/O protocol (``__init__``, ``start_keepalive``,
    ``connection_lost``), if uvicorn serves with it (it imports only the
    protocol of its ``--ws``); True if the protocol is (now) wrapped."""
    module = sys.modules.get(SANSIO_MODULE)
    if module is None:
        return False
    protocol_class = module.WebSocketsSansIOProtocol
    if getattr(protocol_class.connection_lost, "closes_parser", False):
        return True
    init, start_keepalive, connection_lost = (
        protocol_class.__init__,
        protocol_class.start_keepalive,
        protocol_class.connection_lost,
    )

    def lean_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.queue = ApplicationQueue()

    def start_keepalive_without_handshake(self: Any) -> None:
        # Called once, right after the accept's 101 went out.
        self.request = self.response = None
        start_keepalive(self)

    def connection_lost_closing_parser(self: Any, exc: Exception | None) -> None:
        try:
            connection_lost(self, exc)
        finally:
            close_parser(self)

    connection_lost_closing_parser.closes_parser = True  # type: ignore[attr-defined]
    for name, wrapper, original in (
        ("__init__", lean_init, init),
        ("start_keepalive", start_keepalive_without_handshake, start_keepalive),
        ("connection_lost", connection_lost_closing_parser, connection_lost),
    ):
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(protocol_class, name, wrapper)
    return True
