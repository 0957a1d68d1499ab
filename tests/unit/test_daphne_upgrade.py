"""rooms.daphne_upgrade: a WebSocket upgrade whole in its first read goes
straight to daphne's WebSocket protocol, and only when twisted's parser and
daphne's ``WebRequest.process`` would have upgraded it the same way.

The equivalence test runs twisted's own HTTP channel and daphne's own
re-injection on the same bytes, and autobahn's own header parser on what each
path hands it."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from autobahn.websocket.protocol import parseHttpHeader
from daphne.http_protocol import HTTPFactory
from daphne.utils import HEADER_NAME_RE, INVALID_HEADER_VALUE_BYTES
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import http

from rooms.daphne_server import LeanDaphneServer
from rooms.daphne_upgrade import UpgradeSniffingHTTPFactory, upgrade_query_string

# What clients send: the websockets library (the e2e tests' and the bench's
# client) and a browser.
WEBSOCKETS_CLIENT = (
    b"GET /ws/room-1?token=abc.def.ghi HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8000\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"User-Agent: Python/3.11 websockets/17.4\r\n\r\n"
)
BROWSER = (
    b"GET /ws/board?userId=u1 HTTP/1.1\r\n"
    b"Host: localhost:8000\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: http://localhost:8000\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: sessionid=abc; csrftoken=def\r\n"
    b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Sec-WebSocket-Protocol: dorm.v1, other\r\n\r\n"
)


def test_what_clients_send_takes_the_fast_path() -> None:
    assert upgrade_query_string(WEBSOCKETS_CLIENT) == b"token=abc.def.ghi"
    assert upgrade_query_string(BROWSER) == b"userId=u1"
    assert upgrade_query_string(BROWSER.replace(b"?userId=u1", b"")) == b""
    # A first frame sent right behind the head (pipelined) stays in the data.
    assert upgrade_query_string(WEBSOCKETS_CLIENT + b"\x81\x85abcd12345") == b"token=abc.def.ghi"


@pytest.mark.parametrize(
    "data",
    [
        WEBSOCKETS_CLIENT[:-2],  # head not whole yet
        WEBSOCKETS_CLIENT.replace(b"GET", b"POST"),
        WEBSOCKETS_CLIENT.replace(b"HTTP/1.1", b"HTTP/1.0"),
        WEBSOCKETS_CLIENT.replace(b"/ws/room-1", b"http://h/ws/room-1"),  # absolute form
        WEBSOCKETS_CLIENT.replace(b"room-1", "r\u00e9".encode()),  # not ASCII: daphne's 400
        WEBSOCKETS_CLIENT.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        WEBSOCKETS_CLIENT.replace(b"Upgrade: websocket\r\n", b""),
        WEBSOCKETS_CLIENT.replace(b"Host:", b"Host :"),  # space before the colon
        WEBSOCKETS_CLIENT.replace(b"Connection: Upgrade\r\n", b"Connection: Upgrade\r\nConnection: keep-alive\r\n"),
        WEBSOCKETS_CLIENT.replace(b"Host: ", b"Host: \x0b"),  # daphne's INVALID_HEADER_VALUE_BYTES
        WEBSOCKETS_CLIENT.replace(b"Host: ", b"Host: \x00"),
        WEBSOCKETS_CLIENT.replace(b"Host: ", b"Host: \xe9"),
        WEBSOCKETS_CLIENT.replace(b"\r\nHost", b"\nHost"),  # a bare LF
        WEBSOCKETS_CLIENT.replace(b"Host: 127.0.0.1:8000\r\n", b"Host: 127.0.0.1:8000\r\n folded\r\n"),
        WEBSOCKETS_CLIENT.replace(b"Host:", b"Content-Length: 0\r\nHost:"),
        WEBSOCKETS_CLIENT.replace(b"Host:", b"Transfer-Encoding: chunked\r\nHost:"),
        WEBSOCKETS_CLIENT.replace(b"Host:", b"X-Big: " + b"x" * 9000 + b"\r\nHost:"),
    ],
)
def test_anything_unusual_is_left_to_twisted(data: bytes) -> None:
    assert upgrade_query_string(data) is None


# -- the same request through twisted and daphne's re-injection ---------------------


class CapturedRequest(http.Request):
    """twisted's request, stopped where daphne's WebRequest.process starts."""

    captured: list[CapturedRequest] = []

    def process(self) -> None:
        CapturedRequest.captured.append(self)


def twisted_path(data: bytes) -> tuple[list[CapturedRequest], bytes]:
    """What twisted's HTTP channel makes of ``data``: its requests, and what it wrote back."""
    CapturedRequest.captured = []
    channel = http.HTTPChannel()
    channel.requestFactory = CapturedRequest
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(data)
    channel.setTimeout(None)
    return CapturedRequest.captured, transport.value()


def daphne_upgrades(request: CapturedRequest) -> tuple[bytes, bytes] | None:
    """daphne 4.2's WebRequest.process up to the WebSocket hand-over: None
    where it answers 400 or serves plain HTTP; else (query string, the bytes
    it re-injects into autobahn)."""
    for name, values in request.requestHeaders.getAllRawHeaders():
        if not HEADER_NAME_RE.fullmatch(name):
            return None
        if any(INVALID_HEADER_VALUE_BYTES.intersection(v) for v in values):
            return None
    upgrade = request.requestHeaders.getRawHeaders(b"Upgrade", [None])[0]
    try:
        request.path.decode("ascii")
    except UnicodeDecodeError:
        return None
    query_string = b""
    if b"?" in request.uri:
        query_string = request.uri.split(b"?", 1)[1]
        try:
            query_string.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not (upgrade and upgrade.lower() == b"websocket"):
        return None
    data = request.method + b" " + request.uri + b" HTTP/1.1\x0d\x0a"
    for h in request.requestHeaders.getAllRawHeaders():
        data += h[0] + b": " + b",".join(h[1]) + b"\x0d\x0a"
    data += b"\x0d\x0a"
    return query_string, data + request.content.read()


HEADER_NAMES = st.sampled_from([
    b"Host", b"Upgrade", b"upgrade", b"UPGRADE", b"Connection", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version",
    b"Origin", b"Cookie", b"X_Forwarded", b"X-Forwarded-For", b"Content-Length", b"Transfer-Encoding", b"Expect",
    b"Bad Name", b"", b"Na\xe9me", b"Name ", b" Name",
])
VALUE_BYTES = st.sampled_from([b"a", b"Z", b" ", b"\t", b"websocket", b"WebSocket", b",", b";", b"=", b"0", b"\x0b",
                               b"\x00", b"\x7f", b"\xe9", b"\x85", b"\r", b"\n", b":", b"%20"])
VALUES = st.lists(VALUE_BYTES, max_size=6).map(b"".join)
TARGETS = st.builds(lambda p, q: p + q,
                    st.sampled_from([b"/ws/r1", b"/", b"/ws/r\xc3\xa9", b"http://h/ws/r1", b"*", b"", b"/a b"]),
                    st.sampled_from([b"", b"?", b"?token=a.b.c", b"?x=\xe9", b"?a=1&a=2", b"?q=%41"]))
HEADERS = st.lists(st.tuples(HEADER_NAMES, st.sampled_from([b":", b": ", b" : ", b":\t"]), VALUES), max_size=6)


@st.composite
def requests(draw: Any) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"get", b"HEAD"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 x"]))
    headers = draw(HEADERS)
    if draw(st.booleans()):  # mostly a real upgrade somewhere in the list
        headers.insert(draw(st.integers(0, len(headers))), (b"Upgrade", b": ", draw(st.sampled_from(
            [b"websocket", b"WebSocket", b" websocket ", b"websocket, h2c", b"h2c"]))))
    eol = draw(st.sampled_from([b"\r\n"] * 5 + [b"\n"]))
    head = method + b" " + draw(TARGETS) + b" " + version + eol
    head += b"".join(n + sep + v + eol for n, sep, v in headers)
    return head + eol + draw(st.sampled_from([b"", b"\x81\x80abcd", b"GET / HTTP/1.1\r\n\r\n"]))


@given(requests())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(WEBSOCKETS_CLIENT)
@example(BROWSER)
@example(WEBSOCKETS_CLIENT.replace(b"Host:", b"Ho_st:"))  # a token; daphne leaves it out of the scope either way
def test_fast_path_takes_only_what_daphne_would_upgrade_the_same_way(data: bytes) -> None:
    query_string = upgrade_query_string(data)
    if query_string is None:
        return  # twisted's path, unchanged
    requests_, written = twisted_path(data)
    assert written == b"", f"twisted answered {written[:40]!r}"
    assert requests_, "twisted made no request of it"
    slow = daphne_upgrades(requests_[0])
    assert slow is not None, "daphne would not have upgraded it"
    slow_query_string, reinjected = slow
    assert query_string == slow_query_string
    # autobahn reads the same request line and the same headers, counts included
    # (it refuses a repeated Sec-WebSocket-Key, say), from either path's bytes.
    head = data[: data.index(b"\r\n\r\n") + 4]
    assert parseHttpHeader(head) == parseHttpHeader(reinjected)


# -- the hand-over ---------------------------------------------------------------------


class RecordingProtocol(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class RecordingFactory:
    def __init__(self) -> None:
        self.built: list[RecordingProtocol] = []

    def buildProtocol(self, addr: Any) -> RecordingProtocol:
        p = RecordingProtocol()
        self.built.append(p)
        return p


@pytest.fixture
def factory() -> tuple[Any, RecordingFactory, Clock]:
    server = LeanDaphneServer(application=None, endpoints=["tcp:port=0"])
    server.connections = {}  # what run() sets up
    server.http_factory = HTTPFactory(server)  # as daphne's run() does
    assert type(server.http_factory) is UpgradeSniffingHTTPFactory
    ws = RecordingFactory()
    server._ws_factory = ws
    clock = Clock()
    server.http_factory.reactor = clock
    return server.http_factory, ws, clock


def test_a_whole_upgrade_goes_to_the_websocket_protocol_and_the_channel_is_let_go(factory: Any) -> None:
    http_factory, ws, clock = factory
    generic = http_factory.buildProtocol(None)
    transport = StringTransport()
    generic.makeConnection(transport)
    assert transport.producer is not None and clock.getDelayedCalls()  # twisted's channel: producer, idle timeout
    channel = weakref.ref(generic._channel)
    data = WEBSOCKETS_CLIENT + b"\x81\x80abcd"
    transport.protocol = generic
    generic.dataReceived(data)
    [ws_protocol] = ws.built
    assert transport.protocol is ws_protocol
    assert ws_protocol.transport is transport and ws_protocol.received == [data]  # the bytes as received
    assert ws_protocol._raw_query_string == b"token=abc.def.ghi"
    assert transport.producer is None and not clock.getDelayedCalls()
    assert transport.value() == b""
    del generic
    assert channel() is None, gc.get_referrers(channel())  # freed by reference counting alone


@pytest.mark.parametrize(
    ("reads", "uri"),
    [
        ([WEBSOCKETS_CLIENT[:30], WEBSOCKETS_CLIENT[30:]], b"/ws/room-1?token=abc.def.ghi"),  # a head split over two reads
        ([b"GET /api/rooms/ HTTP/1.1\r\nHost: x\r\n\r\n"], b"/api/rooms/"),  # plain HTTP
    ],
    ids=["split-head", "plain-http"],
)
def test_the_rest_takes_twisted_path(factory: Any, monkeypatch: pytest.MonkeyPatch, reads: list[bytes], uri: bytes) -> None:
    http_factory, ws, _clock = factory
    seen: list[bytes] = []
    monkeypatch.setattr("daphne.http_protocol.WebRequest.process", lambda self: seen.append(self.uri))
    generic = http_factory.buildProtocol(None)
    generic.makeConnection(StringTransport())
    for data in reads:
        generic.dataReceived(data)
    assert seen == [uri] and ws.built == []
    generic._channel.setTimeout(None)
