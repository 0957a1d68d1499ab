"""rooms.daphne_server: daphne's per-connection sweeps, visiting only what is
due, act exactly as daphne's own (its ``Server``, run side by side on the
same scenarios and the same clock) while touching far fewer connections;
small frames' masks done in Python give autobahn's bytes."""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

import pytest
from autobahn.nvx._xormasker import create_xor_masker as autobahn_masker
from daphne import server as daphne_server_module
from daphne import ws_protocol
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from hypothesis import given, settings
from hypothesis import strategies as st

from rooms import daphne_server
from rooms.daphne_server import (
    SMALL_FRAME_BYTES,
    IntXorMasker,
    LeanDaphneServer,
    LeanWebSocketFactory,
    small_frames_unmasked_in_python,
    unmask,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    for module in (daphne_server_module, ws_protocol, daphne_server):
        monkeypatch.setattr(module, "time", clock)
    # The sweeps reschedule themselves on twisted's reactor, which never runs here.
    for module in (daphne_server_module, daphne_server):
        monkeypatch.setattr(module.reactor, "callLater", lambda *a, **k: None)
    return clock


def make(cls: type[Server]) -> Server:
    server = cls(application=None, endpoints=["tcp:port=0"], ping_interval=300, websocket_timeout=-1,
                 application_close_timeout=10, websocket_connect_timeout=5)
    server.connections = {}  # what run() sets up
    return server


# -- application_checker ---------------------------------------------------------


class HttpLikeProtocol:
    """What the sweeps call on a non-WebSocket connection."""

    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []
        self.timeout_checks = 0

    def handle_exception(self, exception: BaseException) -> None:
        self.exceptions.append(exception)

    def check_timeouts(self) -> None:
        self.timeout_checks += 1


def state(server: Server, protocols: list[HttpLikeProtocol]) -> list[Any]:
    return [sorted(server.connections[p]) if p in server.connections else None for p in protocols] + [
        [len(p.exceptions) for p in protocols]
    ]


async def test_application_checks_match_daphnes(clock: Clock) -> None:
    """Apps that end, fail, outlive their socket or never end: after every
    second, both servers hold the same connections and made the same calls."""
    release: dict[str, asyncio.Event] = {}

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        how = scope["how"]
        if how == "fails":
            raise RuntimeError("boom")
        if how == "ignores cancel":  # stays until cancelled by the close timeout
            await asyncio.Event().wait()
        await release[scope["name"]].wait()

    scenarios = {  # name: (how, when its socket closes, when its app is released)
        "ends, then closes": ("ends", 4, 2),
        "closes, then ends": ("ends", 2, 5),
        "fails": ("fails", None, None),
        "closes, never ends": ("ignores cancel", 3, None),
        "closes at once": ("ends", 0, 1),
        "stays": ("ends", None, None),
    }
    servers = [make(Server), make(LeanDaphneServer)]
    protocols: list[list[HttpLikeProtocol]] = [[], []]
    for server, mine in zip(servers, protocols):
        server.application = application
        for name, (how, _, _) in scenarios.items():
            p = HttpLikeProtocol()
            mine.append(p)
            server.protocol_connected(p)
            server.create_application(p, {"type": "http", "how": how, "name": f"{id(server)}{name}"})
            release[f"{id(server)}{name}"] = asyncio.Event()
    for second in range(0, 20):
        clock.now += 1
        for server, mine in zip(servers, protocols):
            for p, (name, (_, closes, ends)) in zip(mine, scenarios.items()):
                if closes == second:
                    server.protocol_disconnected(p)
                if ends == second:
                    release[f"{id(server)}{name}"].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for server in servers:
            server.application_checker()
        await asyncio.sleep(0)  # cancelled apps finish
        assert state(servers[0], protocols[0]) == state(servers[1], protocols[1]), f"second {second}"
    # The end state is what it should be: every closed socket is gone (no leak).
    names = list(scenarios)
    assert [names[i] for i, p in enumerate(protocols[1]) if p in servers[1].connections] == ["fails", "stays"]
    assert len(protocols[1][names.index("fails")].exceptions) == 1
    assert not servers[1].application_check_due  # nothing left to visit


async def test_an_idle_connection_is_not_visited(clock: Clock) -> None:
    server = make(LeanDaphneServer)

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    server.application = application
    protocols = [HttpLikeProtocol() for _ in range(1000)]
    for p in protocols:
        server.protocol_connected(p)
        server.create_application(p, {"type": "websocket"})
    server.application_checker()
    assert not server.application_check_due
    server.protocol_disconnected(protocols[0])
    assert server.application_check_due == {protocols[0]}
    for details in server.connections.values():
        details["application_instance"].cancel()


# -- timeout_checker ---------------------------------------------------------------


def websocket(server: Server, rng: random.Random, clock: Clock, log: list[tuple[int, str, float]], index: int) -> Any:
    """A daphne WebSocketProtocol with the attributes its check_timeouts reads;
    its actions (ping, reject, close) are logged instead of sent, and a
    rejected or closed socket is gone by the next sweep, as it would be."""
    p = ws_protocol.WebSocketProtocol.__new__(ws_protocol.WebSocketProtocol)
    p.server = server
    p.socket_opened = clock.now - rng.uniform(0, 600)
    p.last_ping = max(p.socket_opened, clock.now - rng.uniform(0, 300))
    p.state = p.STATE_CONNECTING if index % 50 == 0 else p.STATE_OPEN

    def closed(what: str) -> None:
        log.append((index, what, clock.now))
        p.state = p.STATE_CLOSED
        del server.connections[p]

    p._sendAutoPing = lambda: log.append((index, "ping", clock.now))
    p.serverReject = lambda: closed("reject")
    p.serverClose = lambda *a: closed("close")
    return p


@pytest.mark.parametrize("websocket_timeout", [-1, 400])
def test_timeout_checks_match_daphnes(clock: Clock, websocket_timeout: int) -> None:
    """1,000 sockets (open, connecting, a plain HTTP connection), some
    receiving frames (which move their ping), over 700 s of sweeps: the same
    pings, rejects and closes in the same sweeps as daphne's, from a small
    fraction of the checks."""
    logs: list[list[tuple[int, str, float]]] = [[], []]
    servers = [make(Server), make(LeanDaphneServer)]
    sockets: list[list[Any]] = [[], []]
    start = clock.now
    for server, log, mine in zip(servers, logs, sockets):
        server.websocket_timeout = websocket_timeout
        rng = random.Random(7)
        for i in range(1000):
            p = websocket(server, rng, clock, log, i)
            mine.append(p)
            server.protocol_connected(p)
        http = HttpLikeProtocol()
        mine.append(http)
        server.protocol_connected(http)
    checks = [0, 0]
    for i, server in enumerate(servers):
        for p in sockets[i][:-1]:
            original = p.check_timeouts

            def counted(original: Any = original, i: int = i) -> None:
                checks[i] += 1
                original()

            p.check_timeouts = counted
    rng = random.Random(3)
    while clock.now < start + 700:
        clock.now += 2
        # A few sockets get a frame (daphne moves last_ping) or finish connecting.
        for _ in range(5):
            k = rng.randrange(1000)
            for mine in sockets:
                mine[k].last_ping = clock.now
        if clock.now == start + 2:
            for mine in sockets:
                mine[50].state = mine[50].STATE_OPEN
        for server in servers:
            server.timeout_checker()
    # The same actions at the same times (within a sweep, daphne goes by connection order, the heap by due time).
    assert sorted(logs[0], key=lambda e: (e[2], e[0], e[1])) == sorted(logs[1], key=lambda e: (e[2], e[0], e[1]))
    assert {what for _, what, _ in logs[0]} >= ({"ping", "reject", "close"} if websocket_timeout > 0 else {"ping", "reject"})
    assert sockets[0][-1].timeout_checks == sockets[1][-1].timeout_checks == 350  # HTTP: every sweep
    assert checks[1] * 20 < checks[0], checks


def test_a_closed_socket_leaves_the_heap(clock: Clock) -> None:
    server = make(LeanDaphneServer)
    log: list[tuple[int, str, float]] = []
    p = websocket(server, random.Random(1), clock, log, 1)
    server.protocol_connected(p)
    server.protocol_disconnected(p)
    del server.connections[p]
    clock.now += 400
    server.timeout_checker()
    assert not server.timeout_checks and not log


def test_a_closed_socket_is_not_held_until_its_next_check(clock: Clock) -> None:
    """An open socket's next check is its next ping, ``--ping-interval``
    away (300 s here, as under ``make run``): once closed, it is freed at
    once, not held by the heap until then."""
    import weakref

    server = make(LeanDaphneServer)
    p = ws_protocol.WebSocketProtocol.__new__(ws_protocol.WebSocketProtocol)
    p.socket_opened = p.last_ping = clock.now
    p.state = p.STATE_OPEN
    server.protocol_connected(p)
    assert server.timeout_checks[0][0] == clock.now + 300
    server.protocol_disconnected(p)
    del server.connections[p]  # its application ended: the next application check
    server.application_check_due.clear()
    freed = weakref.ref(p)
    del p
    assert freed() is None
    clock.now += 301
    server.timeout_checker()
    assert not server.timeout_checks


def test_daphnes_command_line_builds_this_server() -> None:
    from daphne import cli

    saved = cli.CommandLineInterface.server_class
    try:
        cli.CommandLineInterface.server_class = Server
        daphne_server.install("asyncio")
        assert cli.CommandLineInterface.server_class is LeanDaphneServer
        cli.CommandLineInterface.server_class = other = type("Other", (Server,), {})
        daphne_server.install("asyncio")  # someone else's choice stands
        assert cli.CommandLineInterface.server_class is other
    finally:
        cli.CommandLineInterface.server_class = saved


# -- small frames' masks ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(mask=st.binary(min_size=4, max_size=4), data=st.binary(max_size=2 * SMALL_FRAME_BYTES), cuts=st.lists(st.integers(0, 2 * SMALL_FRAME_BYTES), max_size=4))
def test_int_masker_unmasks_as_autobahns_in_any_pieces(mask: bytes, data: bytes, cuts: list[int]) -> None:
    """A frame's payload may arrive in several reads: the masker continues
    the mask where the last piece ended, as autobahn's does."""
    edges = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    ours, theirs = IntXorMasker(mask), autobahn_masker(mask, len(data))
    out_ours, out_theirs = b"", b""
    for start, end in zip(edges, edges[1:]):
        out_ours += ours.process(data[start:end])
        out_theirs += theirs.process(data[start:end])
        assert ours.pointer() == theirs.pointer() == end
    assert out_ours == out_theirs
    assert IntXorMasker(mask).process(out_ours) == data  # masking twice gives the payload back
    ours.reset()
    assert ours.pointer() == 0


def test_autobahn_makes_int_maskers_for_small_frames_only() -> None:
    from autobahn.websocket import protocol

    saved = protocol.create_xor_masker
    try:
        small_frames_unmasked_in_python()
        patched = protocol.create_xor_masker
        small_frames_unmasked_in_python()
        assert protocol.create_xor_masker is patched  # idempotent: not wrapped twice
        assert isinstance(patched(b"abcd", 60), IntXorMasker)
        assert not isinstance(patched(b"abcd", SMALL_FRAME_BYTES), IntXorMasker)
        assert not isinstance(patched(b"abcd", None), IntXorMasker)  # length unknown: autobahn's
    finally:
        protocol.create_xor_masker = saved


# -- the application queue ------------------------------------------------------------


async def test_application_queue_delivers_in_order_and_loses_nothing_to_a_cancelled_getter() -> None:
    from rooms.daphne_server import ApplicationQueue

    queue = ApplicationQueue()
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert await queue.get() == 1 and await queue.get() == 2 and queue.qsize() == 0
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(3)  # wakes the getter...
    getter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert queue.qsize() == 1 and await queue.get() == 3  # still there for the next get
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.sleep(0)
    queue.put_nowait(4)  # put after a cancelled wait: queued, not lost
    assert await asyncio.wait_for(queue.get(), 1) == 4
    later = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(5)
    assert await asyncio.wait_for(later, 1) == 5


def test_an_idle_connection_holds_a_small_queue() -> None:
    import sys

    from rooms.daphne_server import ApplicationQueue

    queue = ApplicationQueue()
    assert sys.getsizeof(queue) < 100  # an asyncio.Queue with its deques and Event is ~3.2 KB


# -- autobahn's options on the protocol class (LeanWebSocketFactory) -----------


class _NoServer:
    def __init__(self) -> None:
        self.connections: dict[Any, Any] = {}


def _connected(factory: WebSocketFactory) -> Any:
    from twisted.internet.testing import StringTransport

    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())  # autobahn's _connectionMade: where options were copied
    return protocol


def test_protocols_read_the_options_from_their_class_not_a_copy_each() -> None:
    lean = LeanWebSocketFactory(_NoServer(), server="daphne")
    plain = WebSocketFactory(_NoServer(), server="daphne")
    for f in (lean, plain):
        f.setProtocolOptions(autoPingTimeout=7, allowNullOrigin=True, openHandshakeTimeout=3)
    a, b = _connected(lean), _connected(plain)
    names = WebSocketProtocol.CONFIG_ATTRS
    assert len(names) >= 29
    assert not set(names) & set(vars(a)), "no option copied into the instance"
    assert set(names) <= set(vars(b)), "autobahn's own factory copies them all"
    for name in names:
        assert getattr(a, name) is getattr(lean, name), name
        assert getattr(b, name) is getattr(plain, name), name
    assert a.autoPingTimeout == 7 and a.openHandshakeTimeout == 3 and a.allowNullOrigin is True
    assert isinstance(a, WebSocketProtocol) and a.factory is lean
    assert len(vars(a)) == len(vars(b)) - len(names)


def test_a_callable_option_is_called_as_autobahn_calls_it() -> None:
    seen: list[Any] = []

    def accept(offers: list[Any]) -> None:
        seen.append(offers)

    lean = LeanWebSocketFactory(_NoServer(), server="daphne")
    lean.setProtocolOptions(perMessageCompressionAccept=accept)
    protocol = _connected(lean)
    assert protocol.perMessageCompressionAccept is accept  # not bound to the protocol
    protocol.perMessageCompressionAccept(["offer"])
    assert seen == [["offer"]]


def test_options_set_later_reach_the_protocols_built_after() -> None:
    lean = LeanWebSocketFactory(_NoServer(), server="daphne")
    lean.setProtocolOptions(autoPingTimeout=5)
    before = _connected(lean)
    lean.setProtocolOptions(autoPingTimeout=9)
    after = _connected(lean)
    assert (before.autoPingTimeout, after.autoPingTimeout) == (5, 9)


def test_the_lean_server_makes_daphnes_factory_a_config_on_class_one() -> None:
    server = LeanDaphneServer(application=None, endpoints=["tcp:port=0"])
    server.ws_factory = WebSocketFactory(server, server="daphne")  # what daphne's run() does
    assert type(server.ws_factory) is LeanWebSocketFactory


def test_an_open_socket_lets_the_handshake_data_go() -> None:
    from autobahn.websocket.types import ConnectionRequest

    class Server:
        logged: list[tuple[str, str, dict[str, Any]]] = []

        def log_action(self, protocol: str, action: str, details: dict[str, Any]) -> None:
            self.logged.append((protocol, action, details))

    protocol = _connected(LeanWebSocketFactory(_NoServer(), server="daphne"))
    headers = {"host": "dorm.example.com", "user-agent": "x" * 200}
    protocol.http_headers = headers
    protocol.http_request_data = b"GET /ws/lobby HTTP/1.1\r\n" + b"x" * 300
    protocol.request = ConnectionRequest(
        None, headers, "dorm.example.com", "/ws/lobby", {"token": ["t"]}, 13, None, [], []
    )
    protocol.server, protocol.client_addr = Server(), ("127.0.0.1", 5)
    protocol.onOpen()
    assert Server.logged == [("websocket", "connected", {"path": "/ws/lobby", "client": "127.0.0.1:5"})]
    assert protocol.http_request_data == b""
    assert dict(protocol.http_headers) == {} and dict(protocol.request.headers) == {}
    assert dict(protocol.request.params) == {}
    assert protocol.request.path == "/ws/lobby"  # what daphne reads later


# -- small frames and keepalive pings (LeanFrames) --------------------------------------------------------

PONG = b"\x8a\x80" + b"abcd"  # a client's masked empty pong


class _PingingServer(_NoServer):
    def __init__(self) -> None:
        super().__init__()
        self.pinged: list[tuple[Any, float]] = []

    def ping_sent(self, protocol: Any, when: float) -> None:
        self.pinged.append((protocol, when))


def _open(server: Any) -> Any:
    """An open socket's protocol (the handshake's end state autobahn's parser reads)."""
    factory = LeanWebSocketFactory(_NoServer(), server="daphne")
    factory.setProtocolOptions(autoPingTimeout=5)
    protocol = _connected(factory)
    protocol.state, protocol.current_frame, protocol.data, protocol.inside_message = protocol.STATE_OPEN, None, b"", False
    protocol.server = server
    return protocol


def test_a_ping_is_one_empty_frame_and_a_lone_pong_skips_autobahns_parser(clock: Clock) -> None:
    server = _PingingServer()
    protocol = _open(server)
    parsed: list[bytes] = []
    protocol.processData = lambda: parsed.append(protocol.data) and False
    protocol._sendAutoPing()
    assert protocol.transport.value() == b"\x89\x00"
    assert server.pinged == [(protocol, clock.now)] and protocol.ping_sent_at == clock.now
    clock.now += 1
    protocol._sendAutoPing()  # unanswered: pinged again, timed from the first
    assert protocol.transport.value() == b"\x89\x00" * 2 and server.pinged == [(protocol, clock.now - 1)]
    protocol.dataReceived(PONG)
    assert protocol.ping_sent_at == 0.0 and parsed == []  # answered, autobahn never saw it
    protocol.dataReceived(PONG)  # unsolicited (allowed as a heartbeat): nothing to do either
    assert parsed == [] and protocol.ping_sent_at == 0.0


def test_a_pong_in_pieces_goes_to_autobahn_and_still_answers(clock: Clock) -> None:
    for reads in ([PONG[:2], PONG[2:]], [b"\x89\x80abcd"]):  # a pong in two reads; a ping from the client
        protocol = _open(_PingingServer())
        parsed: list[bytes] = []
        protocol.processData = lambda protocol=protocol, parsed=parsed: parsed.append(protocol.data) and False
        protocol._sendAutoPing()
        for data in reads:
            protocol.dataReceived(data)
        assert protocol.ping_sent_at == 0.0, reads
        assert parsed and parsed[-1] == b"".join(reads), reads


# Frames a client may send: (first byte, payload, masked), any kind, size
# and validity; a read may hold several and cut any anywhere.
_frame = st.one_of(
    st.tuples(st.just(0x81), st.text(max_size=300).map(str.encode), st.just(True)),  # text
    st.tuples(st.just(0x82), st.binary(max_size=700), st.just(True)),  # binary
    st.tuples(st.sampled_from([0x81, 0x82]), st.integers(0, 700).map(b"x".__mul__), st.just(True)),  # any size, some above SMALL_FRAME_BYTES
    st.tuples(st.sampled_from([0x81, 0x01]), st.binary(max_size=40), st.booleans()),  # bad UTF-8, fragments, unmasked
    st.tuples(st.sampled_from([0x8A, 0x89]), st.binary(max_size=130), st.just(True)),  # pong, ping (> 125: invalid)
    st.tuples(st.just(0x80), st.binary(max_size=20), st.just(True)),  # a continuation with no message begun
    st.tuples(st.sampled_from([0x91, 0xC1, 0x83]), st.binary(max_size=8), st.just(True)),  # reserved bits, opcode 3
    st.tuples(st.just(0x88), st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8bye"]), st.just(True)),  # close
)


def _wire(b0: int, payload: bytes, masked: bool, mask: bytes, long_form: bool) -> bytes:
    n = len(payload)
    if n < 126 and not long_form:
        head = bytes((b0, n | (0x80 if masked else 0)))
    elif n < 65536:
        head = bytes((b0, 126 | (0x80 if masked else 0))) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 127 | (0x80 if masked else 0))) + n.to_bytes(8, "big")
    return head + (mask + unmask(mask, payload) if masked else payload)


@settings(max_examples=400, deadline=None)
@given(
    frames=st.lists(st.tuples(_frame, st.binary(min_size=4, max_size=4), st.integers(0, 20)), max_size=8),
    cuts=st.lists(st.integers(0, 3000), max_size=6),
    max_message=st.sampled_from([0, 100, 1 << 20]),
)
def test_small_frames_reach_the_application_exactly_as_through_autobahn(
    frames: list[Any], cuts: list[int], max_message: int
) -> None:
    """Any frames, in any reads: the messages handed on, the bytes written
    back (pongs, closes, failures) and the end state are autobahn's own."""
    stream = b"".join(_wire(*f, mask, long_form=(k == 0)) for f, mask, k in frames)  # now and then 126 + 2 bytes for a small one
    edges = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    from twisted.internet.testing import StringTransport

    class Transport(StringTransport):
        def unregisterProducer(self) -> None:  # a failed connection's drop calls it, registered or not
            self.producer = None

    outcomes = []
    for factory_class in (WebSocketFactory, LeanWebSocketFactory):
        factory = factory_class(_NoServer(), server="daphne")
        factory.setProtocolOptions(maxMessagePayloadSize=max_message)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(Transport())
        # What autobahn's handshake leaves (RFC 6455, no extension).
        protocol.state, protocol.current_frame, protocol.data, protocol.inside_message = protocol.STATE_OPEN, None, b"", False
        protocol.websocket_version, protocol.websocket_extensions_in_use = 13, []
        messages: list[tuple[bytes, bool]] = []
        protocol.onMessage = lambda payload, binary, messages=messages: messages.append((payload, binary))
        for start, end in zip(edges, edges[1:]):
            protocol.dataReceived(stream[start:end])
        outcomes.append((messages, protocol.transport.value(), protocol.state, protocol.transport.disconnecting))
    assert outcomes[1] == outcomes[0]


def test_small_frames_of_one_read_skip_autobahns_parser() -> None:
    protocol = _open(_PingingServer())
    parsed: list[bytes] = []
    protocol.processData = lambda: parsed.append(protocol.data) and False
    messages: list[tuple[bytes, bool]] = []
    protocol.onMessage = lambda payload, binary: messages.append((payload, binary))
    mask = b"\x01\x02\x03\x04"
    heartbeat, ping = b'{"type":"heartbeat"}', b'{"type":"ping","payload":{"t":1}}'
    protocol.dataReceived(_wire(0x81, heartbeat, True, mask, False) + _wire(0x81, ping, True, mask, False) + PONG)
    assert messages == [(heartbeat, False), (ping, False)] and parsed == []
    protocol.dataReceived(_wire(0x82, b"\x00" * 300, True, mask, False))  # 126 + 2 bytes of length
    assert messages[-1] == (b"\x00" * 300, True) and parsed == []
    big = _wire(0x82, b"\x00" * (SMALL_FRAME_BYTES + 1), True, mask, False)
    protocol.dataReceived(big)
    assert parsed == [big]  # above SMALL_FRAME_BYTES: autobahn's


def test_a_sweeps_pongs_are_checked_by_one_timer_which_drops_only_the_silent(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make(LeanDaphneServer)
    timers: list[tuple[float, Any, tuple[Any, ...]]] = []
    monkeypatch.setattr(daphne_server.reactor, "callLater", lambda delay, f, *args: timers.append((delay, f, args)))
    answered, silent, closed, talked = sockets = [_open(server) for _ in range(4)]
    dropped: list[Any] = []
    for p in sockets:
        p.onAutoPingTimeout = lambda p=p: dropped.append(p)
        p._sendAutoPing()
    timers.clear()  # autobahn's own (the handshake's timeout)
    server.timeout_checker()
    (delay, pongs_due, (pinged,)), _next_sweep = timers
    assert delay == server.ping_timeout and [p for p, _ in pinged] == sockets
    answered.dataReceived(PONG)
    talked.onMessage = lambda payload, binary: None
    talked.dataReceived(b"\x81\x80abcd")  # a frame, no pong: as good as one
    closed.state = closed.STATE_CLOSED
    clock.now += server.ping_timeout
    pongs_due(pinged)
    assert dropped == [silent]


class _ClosingServer(_NoServer):
    def protocol_disconnected(self, protocol: Any) -> None:
        self.connections.pop(protocol, None)

    def log_action(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("factory_class", [WebSocketFactory, LeanWebSocketFactory])
def test_a_closed_protocol_is_freed_without_the_cyclic_collector(factory_class: type) -> None:
    """autobahn resolves ``is_closed`` with the protocol itself: a cycle that
    left every closed socket's ~35 objects for the collector's oldest
    generation (RSS grew with its thresholds raised). Dorm's protocol class
    breaks it; autobahn's own is shown keeping it, so the test can tell."""
    import gc
    import weakref
    from types import SimpleNamespace

    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    server = _ClosingServer()
    protocol = _connected(factory_class(server, server="daphne"))
    # What daphne's onConnect sets at the handshake.
    protocol.server, protocol.client_addr, protocol.request = server, None, SimpleNamespace(path="/ws/r")
    gc.disable()
    try:
        protocol.connectionLost(Failure(ConnectionDone()))
        assert protocol.is_closed.called
        freed = weakref.ref(protocol)
        del protocol
        if factory_class is LeanWebSocketFactory:
            assert freed() is None, "a closed protocol is left in a reference cycle"
        else:
            assert freed() is not None  # autobahn's own: only the collector frees it
    finally:
        gc.enable()
        gc.collect()
