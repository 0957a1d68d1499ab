"""daphne's ``Server`` and autobahn, leaner per connection.

daphne walks every connection once a second (``application_checker``: has
its application finished, has a closed socket's application overrun its
close timeout) and once every two seconds (``timeout_checker``: pings, the
WebSocket and HTTP timeouts). With 10,000 hibernated rooms holding idle
sockets that was ~3.9 % of a core of pure bookkeeping (docs/performance.md,
"Idle CPU"). Here:

- ``application_checker`` visits only connections something happened to:
  its application finished (a done callback marks it) or its socket closed
  (``protocol_disconnected`` marks it); a closed socket whose application is
  still running stays marked, so its close timeout is enforced as before.
- ``timeout_checker`` keeps each connection in a heap by the time its next
  check can do anything (an open WebSocket: its next ping, or its
  ``websocket_timeout``; a WebSocket still connecting: its connect timeout)
  and calls daphne's own ``check_timeouts`` on those due. Anything else (a
  plain HTTP request, a closing socket) is checked every sweep, as daphne
  does.
- each connection's application queue is an ``ApplicationQueue``, not an
  ``asyncio.Queue`` (~3.2 KB less per idle socket).
- small client frames are read without autobahn's frame parser, and
  keepalive pings are one prebuilt frame whose pongs one timer per sweep
  checks (``LeanFrames``);
- autobahn's configuration (29 options, the same for every socket) is read
  from the protocol class instead of copied into every protocol's
  ``__dict__``, and what the handshake alone needed is let go once the socket
  is open (``LeanWebSocketFactory``: ~2.5 KB less per idle socket);
- the reactor dispatches socket events without twisted's logging context
  (``call_logging_errors``) and runs on uvloop's event loop instead of
  asyncio's (``move_reactor_to_uvloop``, ``DORM_EVENT_LOOP``);
- each listening socket's accept queue holds ``LISTEN_BACKLOG`` connections,
  not twisted's 50 (``with_listen_backlog``).

The sweeps keep daphne's periods (1 s and 2 s), so every check happens in
the same sweep daphne's would have acted in. Small client frames are
unmasked in Python (``IntXorMasker``). ``start_with_daphne`` calls
``install``: daphne's command line (``python -m daphne
config.asgi:application``) then builds this server class, unless something
else replaced daphne's first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import re
import time
import weakref
from concurrent.futures import CancelledError
from functools import partial
from types import MappingProxyType
from typing import Any

from daphne.http_protocol import HTTPFactory
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet import reactor

from rooms.daphne_upgrade import UpgradeSniffingHTTPFactory
from rooms.runtime.app_queue import ApplicationQueue
from rooms.runtime.direct_write import twisted_write

logger = logging.getLogger("daphne.server")  # daphne's own messages, under daphne's logger

APPLICATION_CHECK_SECONDS = 1.0  # daphne's periods
TIMEOUT_CHECK_SECONDS = 2.0

# The accept queue of each listening socket: uvicorn's and gunicorn's
# default (node's is 511; the kernel caps it at net.core.somaxconn). With
# twisted's 50, a burst of clients (a reconnect after a deploy, 100 opening
# at once) overflowed it: the kernel dropped their SYNs and each retried a
# second later (docs/performance.md, "Sixteenth round").
LISTEN_BACKLOG = 2048
_BACKLOG_OPTION = re.compile(r"(?:^|(?<!\\):)backlog=")


def with_listen_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """A twisted endpoint description (daphne's ``-b``/``-p``, ``-u`` or
    ``-e``) with ``backlog`` added where twisted would use its 50: ``tcp``,
    ``tcp6``, ``ssl`` and ``unix`` endpoints that do not name one. Others
    (``fd:``, an inherited socket already listening) are left as they are."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in ("tcp", "tcp6", "ssl", "unix") or _BACKLOG_OPTION.search(description):
        return description
    return f"{description}:backlog={backlog}"


def _unbound(value: Any) -> Any:
    return staticmethod(value) if hasattr(type(value), "__get__") else value


_NOTHING: Any = MappingProxyType({})


class HandshakeReleased:
    """A protocol mixin: once open, drop what only the handshake read.

    autobahn keeps the raw request (``http_request_data``) and its parsed
    headers (``http_headers``, also ``request.headers``), and the parsed
    query (``request.params``); nothing reads them after the handshake
    (autobahn's ``processHandshake``, daphne's ``onConnect``, which copied
    the headers into the ASGI scope). daphne reads only ``request.path``
    later (its access log).
    """

    def onOpen(self) -> None:
        super().onOpen()  # type: ignore[misc]
        self.http_request_data = b""
        self.http_headers = _NOTHING
        request = getattr(self, "request", None)
        if request is not None:
            request.headers = _NOTHING
            request.params = _NOTHING


class ClosedWithoutCycles:
    """A protocol mixin: a closed socket's objects are freed at once, by
    reference counting, instead of waiting for the cyclic collector.

    autobahn resolves ``is_closed`` with the protocol itself, so every closed
    protocol sat in a cycle (protocol -> Deferred -> protocol) together with
    the ~35 objects it owns (its transport, frame state, UTF-8 validator,
    traffic stats, application queue, three Deferreds), until a collection
    of the oldest generation found it. That garbage is why the collector's
    thresholds could not be raised without RSS growing (docs/performance.md,
    "Fourteenth round"). Nothing in Dorm or daphne waits on ``is_closed``;
    a callback added after the close gets ``None``.
    """

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)  # type: ignore[misc]
        closed = self.is_closed  # type: ignore[attr-defined]
        if getattr(closed, "result", None) is self:
            closed.result = None


# An empty ping (FIN, opcode 9, no payload).
PING_FRAME = b"\x89\x00"


def unmask(mask: bytes, payload: bytes) -> bytes:
    """A client frame's payload XOR its 4-byte mask, as two Python ints."""
    n = len(payload)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class LeanFrames:
    """A protocol mixin: small client frames and keepalive pings without
    autobahn's frame machinery.

    **Reads.** autobahn parses every frame through a dozen Python calls
    (``processData``, ``onFrameBegin``/``Data``/``End``, the message
    callbacks, a UTF-8 validator and a masker per frame). A read whose
    frames are whole, masked, final text or binary frames of at most
    ``SMALL_FRAME_BYTES``, or pongs, while autobahn's parser sits between
    frames, is handled here: unmasked, its text checked as UTF-8, each
    message handed to ``onMessage`` as autobahn would. From the first frame
    that is anything else (a fragment, a ping or close, a bigger or invalid
    frame, an unmasked one) the rest of the read goes to autobahn, which
    answers or fails it as before. Most of what clients send is small: the
    shipped clients' ``ping`` every 15 s, cursors, chat lines, draws.

    **Pings.** daphne sends a ping from its timeout sweep through autobahn's
    ``_sendAutoPing``: a timestamped random payload (``os.urandom``),
    ``sendFrame``, a write twisted queues for the next reactor turn (two
    ``epoll_ctl``) and a timeout call per ping. Here the ping is one
    prebuilt empty frame sent at once when nothing is queued before it
    (``twisted_write``); the server checks all the pongs of one sweep with one
    timer (``LeanDaphneServer.ping_sent``); any bytes from the peer answer it
    (as autobahn's ``autoPingRestartOnAnyTraffic``). A peer that sends
    nothing for ``autoPingTimeout`` (daphne's ``--ping-timeout``) after a
    ping is dropped as autobahn drops it (``onAutoPingTimeout``).

    **Answers at the edge.** An application may answer some small text
    messages itself, in this call, instead of having each one queued for its
    task (``edge_answer``, set through ``direct_write.answer_at_edge``): the
    consumer answers a keepalive ``ping`` this way while it has nothing else
    of this socket's in hand, as Durable Objects' hibernation API answers a
    ping without waking the object. The message is then not queued: no
    ``onMessage``, no task wake, no second JSON parse.
    """

    # When the oldest unanswered ping went out (time.time()); 0.0: none.
    # A class default, so an idle socket that answers holds no entry for it.
    ping_sent_at = 0.0
    # What the application set with ``answer_at_edge`` (direct_write.py):
    # called with each small text message this mixin reads; True when it
    # answered the message itself, which then never reaches the application's
    # queue. None: every message is queued, as daphne does.
    edge_answer: Any = None

    def _sendAutoPing(self) -> None:
        if self.state != self.STATE_OPEN:  # type: ignore[attr-defined]
            return
        twisted_write(self.transport, PING_FRAME)  # type: ignore[attr-defined]
        if not self.ping_sent_at and self.autoPingTimeout:  # type: ignore[attr-defined]
            self.ping_sent_at = sent = time.time()
            self.server.ping_sent(self, sent)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.ping_sent_at:
            self.ping_sent_at = 0.0  # anything from the peer says it is there
        if (
            self.state == self.STATE_OPEN  # type: ignore[attr-defined]
            and self.current_frame is None  # type: ignore[attr-defined]
            and not self.data  # type: ignore[attr-defined]
            and not self.inside_message  # type: ignore[attr-defined]
            and self._perMessageCompress is None  # type: ignore[attr-defined]
        ):
            data = self._small_frames(data)
            if not data:
                return
        super().dataReceived(data)  # type: ignore[misc]

    def _small_frames(self, data: bytes) -> bytes:
        """Hand over the whole small frames at the start of ``data``; return the rest."""
        pos, size = 0, len(data)
        max_message, max_frame = self.maxMessagePayloadSize, self.maxFramePayloadSize  # type: ignore[attr-defined]
        while size - pos >= 6:
            b0, n = data[pos], data[pos + 1] ^ 0x80  # the mask bit set: n is the length
            head = pos + 2
            if n == 126:
                if size - pos < 8:
                    break
                n = int.from_bytes(data[head : head + 2], "big")
                if n < 126 or n > SMALL_FRAME_BYTES:
                    break  # not minimal (autobahn's violation) or a big frame: autobahn's
                head += 2
            elif n > 125:
                break  # unmasked (autobahn fails it) or a 64-bit length
            end = head + 4 + n
            if end > size:
                break  # not all here yet
            if b0 == 0x81 or b0 == 0x82:  # final text or binary frame, no RSV bits
                if (max_message and n > max_message) or (max_frame and n > max_frame):
                    break  # autobahn closes with 1009
                payload = unmask(data[head : head + 4], data[head + 4 : end])
                if b0 == 0x81:
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError:
                        break  # autobahn closes with 1007
                    answer = self.edge_answer
                    if answer is None or self.muted or not answer(text):  # type: ignore[attr-defined]
                        self.onMessage(payload, False)  # type: ignore[attr-defined]
                    else:
                        self.last_ping = time.time()  # as daphne's onMessage: the peer is there
                else:
                    self.onMessage(payload, True)  # type: ignore[attr-defined]
            elif b0 != 0x8A:
                break  # ping, close, fragment, reserved bits: autobahn's
            # (a pong needs nothing: autobahn's own auto-ping is never pending)
            pos = end
            if self.state != self.STATE_OPEN:  # type: ignore[attr-defined]
                break
        return data[pos:] if pos else data


class LeanWebSocketFactory(WebSocketFactory):
    """daphne's ``WebSocketFactory`` whose protocols hold no copy of its
    options and let the handshake's data go once open (``HandshakeReleased``).

    autobahn's ``_connectionMade`` copies each of its ``CONFIG_ATTRS`` (29
    for a server) from the factory into the new protocol, unless the
    protocol already has the attribute. Here the protocols are built from a
    subclass that has the factory's current values as class attributes, so
    nothing is copied: the instance ``__dict__`` of an open socket drops from
    ~100 entries to ~70, below the size where CPython doubles its table
    (3,328 -> 1,584 bytes). Options set later (``setProtocolOptions``) take
    effect for the protocols built after, as autobahn's copying would.
    """

    _config_class: type | None = None

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)
        self._config_class = None

    def buildProtocol(self, addr: Any) -> Any:
        config_class = self._config_class
        if config_class is None or config_class.__bases__[-1] is not self.protocol:
            base = self.protocol
            # A function (perMessageCompressionAccept) would bind to the
            # protocol as a class attribute: kept a plain callable.
            options = {name: _unbound(getattr(self, name)) for name in base.CONFIG_ATTRS}
            config_class = self._config_class = type(base.__name__, (ClosedWithoutCycles, HandshakeReleased, LeanFrames, base), options)
        protocol = config_class()
        protocol.factory = self
        return protocol


class _LeanerFactory:
    """A server attribute that daphne's ``run()`` assigns a factory to: a
    factory of exactly ``plain``'s class is kept with ``lean`` (a subclass
    adding no state) as its class; anything else (a factory someone else
    replaced) is kept as it is."""

    def __init__(self, plain: type, lean: type) -> None:
        self.plain, self.lean = plain, lean

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = "_" + name

    def __get__(self, server: Any, owner: type | None = None) -> Any:
        return self if server is None else getattr(server, self.attr)

    def __set__(self, server: Any, factory: Any) -> None:
        if type(factory) is self.plain:
            factory.__class__ = self.lean
        setattr(server, self.attr, factory)


class LeanDaphneServer(Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.endpoints = [with_listen_backlog(str(description)) for description in self.endpoints]
        # Connections whose application finished or whose socket closed
        # since the last application check.
        self.application_check_due: set[Any] = set()
        # (when its next timeout check can act, tie-breaker, weak reference
        # to the protocol)
        self.timeout_checks: list[tuple[float, int, weakref.ref[Any]]] = []
        self._tie = itertools.count()
        # (protocol, when) for each ping sent since the last sweep ended: its
        # pong is checked by one timer for the whole sweep (``LeanFrames``).
        self._pinged: list[tuple[Any, float]] = []

    # daphne's run() assigns a plain factory to each; the same object is kept
    # with Dorm's leaner subclass as its class.
    http_factory = _LeanerFactory(HTTPFactory, UpgradeSniffingHTTPFactory)  # upgrades without twisted's request
    ws_factory = _LeanerFactory(WebSocketFactory, LeanWebSocketFactory)  # leaner protocols

    # -- what marks a connection -------------------------------------------

    def protocol_connected(self, protocol: Any) -> None:
        super().protocol_connected(protocol)
        self._schedule_timeout_check(protocol, time.time())  # checked at the next sweep, as daphne would

    def protocol_disconnected(self, protocol: Any) -> None:
        super().protocol_disconnected(protocol)
        self.application_check_due.add(protocol)

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> ApplicationQueue | None:
        """daphne 4.2's ``create_application`` with an ``ApplicationQueue``
        for the ``asyncio.Queue``, and a done callback that marks the
        connection for the application check."""
        assert "application_instance" not in self.connections[protocol]
        input_queue = ApplicationQueue()
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(
            scope=scope, receive=input_queue.get, send=partial(self.handle_reply, protocol)
        )
        if protocol not in self.connections:
            return None
        instance = asyncio.ensure_future(application_instance, loop=asyncio.get_event_loop())
        self.connections[protocol]["application_instance"] = instance
        instance.add_done_callback(lambda _instance, protocol=protocol: self.application_check_due.add(protocol))
        return input_queue

    # -- the sweeps ----------------------------------------------------------

    def application_checker(self) -> None:
        due, self.application_check_due = self.application_check_due, set()
        for protocol in due:
            details = self.connections.get(protocol)
            if details is None:
                continue
            self.check_application(protocol, details)
            if protocol in self.connections and "disconnected" in details:
                # Closed, application still running: its close timeout runs.
                self.application_check_due.add(protocol)
        reactor.callLater(APPLICATION_CHECK_SECONDS, self.application_checker)

    def check_application(self, protocol: Any, details: dict[str, Any]) -> None:
        """daphne 4.2's ``application_checker`` loop body, for one connection."""
        disconnected = details.get("disconnected", None)
        application_instance = details.get("application_instance", None)
        if disconnected and time.time() - disconnected > self.application_close_timeout:
            if application_instance and not application_instance.done():
                logger.warning(
                    "Application instance %r for connection %s took too long to shut down and was killed.",
                    application_instance,
                    repr(protocol),
                )
                application_instance.cancel()
        if application_instance and application_instance.done():
            try:
                exception = application_instance.exception()
            except (CancelledError, asyncio.CancelledError):
                pass
            else:
                if exception:
                    if isinstance(exception, KeyboardInterrupt):
                        self.stop()  # the application asks the server to exit (tests)
                    else:
                        logger.error("Exception inside application: %s", exception, exc_info=exception)
                        if not disconnected:
                            protocol.handle_exception(exception)
            del details["application_instance"]
            application_instance = None
        if not application_instance and disconnected:
            del self.connections[protocol]

    def timeout_checker(self) -> None:
        now = time.time()
        heap, checked = self.timeout_checks, []
        while heap and heap[0][0] <= now:
            protocol = heapq.heappop(heap)[2]()
            details = None if protocol is None else self.connections.get(protocol)
            if details is None or "disconnected" in details:
                continue  # gone: nothing left to time out
            protocol.check_timeouts()
            checked.append(protocol)
        # Pushed after the loop: a check due again at once waits for the next
        # sweep instead of spinning in this one.
        for protocol in checked:
            self._schedule_timeout_check(protocol, now)
        if self._pinged:
            pinged, self._pinged = self._pinged, []
            reactor.callLater(self.ping_timeout, self.pongs_due, pinged)
        reactor.callLater(TIMEOUT_CHECK_SECONDS, self.timeout_checker)

    def ping_sent(self, protocol: Any, when: float) -> None:
        self._pinged.append((protocol, when))

    def pongs_due(self, pinged: list[tuple[Any, float]]) -> None:
        """``ping_timeout`` after a sweep's pings: drop each socket that has
        sent nothing since its ping (autobahn's timeout, one timer for all)."""
        for protocol, when in pinged:
            if protocol.ping_sent_at == when and protocol.state == protocol.STATE_OPEN:
                protocol.onAutoPingTimeout()

    def _schedule_timeout_check(self, protocol: Any, now: float) -> None:
        # A weak reference: an open socket's next check is its next ping, up
        # to ``--ping-interval`` away (300 s under ``make run``), and a socket
        # that closes before it is freed at once, not held until then.
        entry = (self.next_timeout_check(protocol, now), next(self._tie), weakref.ref(protocol))
        heapq.heappush(self.timeout_checks, entry)

    def next_timeout_check(self, protocol: Any, now: float) -> float:
        """The earliest time ``protocol.check_timeouts()`` can act; ``now``
        (the next sweep) where that is not known."""
        if not isinstance(protocol, WebSocketProtocol) or not hasattr(protocol, "socket_opened"):
            return now
        if protocol.state == protocol.STATE_CONNECTING:
            when = protocol.socket_opened + self.websocket_connect_timeout
        elif protocol.state == protocol.STATE_OPEN:
            when = protocol.last_ping + self.ping_interval
        else:
            return now  # closing: its websocket_timeout check, every sweep
        if self.websocket_timeout >= 0:
            when = min(when, protocol.socket_opened + self.websocket_timeout)
        return when


# Below this payload size autobahn's frames are unmasked by IntXorMasker.
# (measured per frame, create + unmask: 60 B 3.9 -> 1.3 us, 200 B 3.8 -> 1.7
# us; even at ~1,000 B, above which autobahn's wins).
SMALL_FRAME_BYTES = 512


class IntXorMasker:
    """autobahn's masker interface (``pointer``, ``reset``, ``process``) for
    small payloads: one XOR of two Python ints.

    Every frame a client sends is masked (RFC 6455), and autobahn builds a
    cffi masker per frame: a C object with a finalizer, a mask buffer, then
    per call a buffer, a copy in and a copy out: ~4 us for a 60-byte frame,
    ~7 % of the event loop's samples in the durable profile
    (docs/performance.md). Big frames keep autobahn's SIMD masker.
    """

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        shift = self._ptr & 3  # a frame may arrive in pieces: continue the mask where the last piece ended
        self._ptr += len(data)
        return unmask(self._mask[shift:] + self._mask[:shift], data)


def small_frames_unmasked_in_python() -> None:
    """autobahn's protocol module creates its maskers through IntXorMasker
    for payloads under SMALL_FRAME_BYTES (idempotent)."""
    from autobahn.websocket import protocol

    original = protocol.create_xor_masker
    if getattr(original, "small_frames_in_python", False):
        return

    def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
        if length is not None and length < SMALL_FRAME_BYTES:
            return IntXorMasker(mask)
        return original(mask, length)

    create_xor_masker.small_frames_in_python = True  # type: ignore[attr-defined]
    protocol.create_xor_masker = create_xor_masker


def call_logging_errors(selectable: Any, func: Any, *args: Any) -> Any:
    """twisted's ``log.callWithLogger`` for the reactor's socket events,
    without the logging context it sets up around every call.

    The asyncio reactor calls each ready socket's ``doRead``/``doWrite``
    through ``callWithLogger``: the socket's log prefix, a context dict copied
    and pushed and popped (``twisted.python.context``), ~1.1 us per event,
    for every client frame and keepalive. That context only names the
    ``system`` of legacy twisted log lines written during the call, and
    daphne sends twisted's log nowhere (verbosity 1, the default) or to
    Python logging, whose records do not show it. What matters is kept: an
    exception is logged with the socket's prefix and goes no further, as
    ``callWithLogger`` does.
    """
    try:
        return func(*args)
    except KeyboardInterrupt:
        raise
    except BaseException:
        from twisted.python import log

        try:
            system = selectable.logPrefix()
        except BaseException:  # as callWithLogger: a broken logPrefix must not hide the error
            system = "(buggy logPrefix method)"
        log.err(system=system)
        return None


def reactor_events_without_log_context() -> None:
    """Have the asyncio reactor dispatch socket events through
    ``call_logging_errors`` (idempotent; sockets registered after this)."""
    from twisted.internet import asyncioreactor

    asyncioreactor.callWithLogger = call_logging_errors  # type: ignore[attr-defined]


EVENT_LOOPS = ("uvloop", "asyncio")


def move_reactor_to_uvloop(reactor: Any) -> bool:
    """Give daphne's asyncio reactor a uvloop loop instead of asyncio's own,
    before it runs; True when it now has one.

    daphne builds its reactor on ``asyncio.new_event_loop()`` when its
    command line starts, before the application (and any setting of it) is
    imported, so the loop cannot be chosen by policy. It is swapped here
    instead, while nothing runs on it: the reactor's registered sockets (its
    waker) move to the new loop through the reactor's own remove/add calls,
    and the loop's default executor (daphne's ``ASGI_THREADS``) goes with
    them. A loop that already has a call scheduled (by the reactor or
    directly) or runs is kept. uvloop runs the loop in C (libuv): every turn,
    socket event, timer and ``call_soon`` costs less Python
    (docs/performance.md, "Eleventh round").
    """
    try:
        import uvloop
    except ImportError:
        logger.warning("DORM_EVENT_LOOP=uvloop but uvloop is not installed: asyncio's event loop stays")
        return False
    current = reactor._asyncioEventloop
    if isinstance(current, uvloop.Loop):
        return True
    if (
        reactor.running
        or current.is_running()
        or reactor.getDelayedCalls()
        or getattr(current, "_ready", ())
        or getattr(current, "_scheduled", ())
    ):
        logger.warning("daphne's event loop already has work scheduled: it stays asyncio's, not uvloop")
        return False
    loop = uvloop.new_event_loop()
    executor = getattr(current, "_default_executor", None)
    if executor is not None:
        loop.set_default_executor(executor)
        current._default_executor = None  # closing the old loop would shut it down
    readers, writers = reactor.getReaders(), reactor.getWriters()
    for reader in readers:
        reactor.removeReader(reader)
    for writer in writers:
        reactor.removeWriter(writer)
    reactor._asyncioEventloop = loop
    for reader in readers:
        reactor.addReader(reader)
    for writer in writers:
        reactor.addWriter(writer)
    import daphne.server

    if getattr(daphne.server, "twisted_loop", None) is current:
        daphne.server.twisted_loop = loop
    current.close()
    return True


def install(event_loop: str = "uvloop") -> None:
    """Make daphne's command line start this server class, with small frames'
    masks done in Python, socket events dispatched without twisted's logging
    context, and (``event_loop`` "uvloop", ``DORM_EVENT_LOOP``) uvloop's
    event loop."""
    from daphne import cli

    event_loop = event_loop.strip().lower() or EVENT_LOOPS[0]
    if event_loop not in EVENT_LOOPS:
        raise ValueError(f"DORM_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, not {event_loop!r}")
    if cli.CommandLineInterface.server_class is Server:
        cli.CommandLineInterface.server_class = LeanDaphneServer
    small_frames_unmasked_in_python()
    reactor_events_without_log_context()
    if event_loop == "uvloop":
        move_reactor_to_uvloop(reactor)
