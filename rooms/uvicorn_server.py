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

And the application can answer small text messages in the protocol's read
(``edge_answer``, set through ``direct_write.answer_at_edge``), as
``rooms/daphne_server.LeanFrames`` lets it on daphne: the consumer answers
a keepalive ``ping`` there, so it is not queued, does not pause the
socket's reads (uvicorn pauses them while a message waits for the
application) and does not wake the consumer's task.
"""

from __future__ import annotations

import sys
from typing import Any

from rooms.runtime.app_queue import ApplicationQueue

# uvicorn's two websockets-based protocols; it imports only the one it
# serves with (its ``--ws``), so which is loaded says which that is.
SANSIO_MODULE = "uvicorn.protocols.websockets.websockets_sansio_impl"
LEGACY_MODULE = "uvicorn.protocols.websockets.websockets_impl"  # deprecated by uvicorn
# The largest text message offered to ``edge_answer`` (a keepalive is ~40).
EDGE_ANSWER_BYTES = 1024


def close_parser(protocol: Any) -> None:
    """End websockets' parser of a uvicorn protocol whose socket is gone."""
    parser = getattr(getattr(protocol, "conn", None), "parser", None)
    close = getattr(parser, "close", None)  # a generator
    if close is not None:
        close()


def install() -> bool:
    """Wrap uvicorn's sans-I/O protocol (``__init__``, ``start_keepalive``,
    ``send_receive_event_to_app``, ``connection_lost``), if uvicorn serves
    with it (it imports only the protocol of its ``--ws``); True if the
    protocol is (now) wrapped."""
    module = sys.modules.get(SANSIO_MODULE)
    if module is None:
        return False
    protocol_class = module.WebSocketsSansIOProtocol
    if hasattr(protocol_class.connection_lost, "__wrapped__"):
        return True  # wrapped already
    init, start_keepalive, to_app, connection_lost = (
        protocol_class.__init__,
        protocol_class.start_keepalive,
        protocol_class.send_receive_event_to_app,
        protocol_class.connection_lost,
    )

    def lean_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.queue = ApplicationQueue()

    def start_keepalive_without_handshake(self: Any) -> None:
        # Called once, right after the accept's 101 went out.
        self.request = self.response = None
        start_keepalive(self)

    def to_app_or_answer(self: Any) -> None:
        # One whole text message in ``frames``: the application may answer it here.
        answer = self.edge_answer
        if answer is not None and self.curr_msg_data_type == "text" and len(self.frames) == 1 and not self.close_sent:
            data = self.frames[0]
            if len(data) <= EDGE_ANSWER_BYTES:
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    text = None  # uvicorn's own path closes with 1007
                if text is not None and answer(text):
                    self.frames = []
                    return
        to_app(self)

    def connection_lost_closing_parser(self: Any, exc: Exception | None) -> None:
        try:
            connection_lost(self, exc)
        finally:
            close_parser(self)

    for name, wrapper, original in (
        ("__init__", lean_init, init),
        ("start_keepalive", start_keepalive_without_handshake, start_keepalive),
        ("send_receive_event_to_app", to_app_or_answer, to_app),
        ("connection_lost", connection_lost_closing_parser, connection_lost),
    ):
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(protocol_class, name, wrapper)
    # A class default: a socket whose application set none holds no entry for it.
    protocol_class.edge_answer = None
    return True
