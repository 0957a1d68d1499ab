"""The connection-rate work (docs/performance.md, "New connections"): the
immediate socket send on daphne keeps byte order, and autobahn's debug
formatting is lazy but unchanged."""

from __future__ import annotations

import socket
from typing import Any

from rooms.asgi import _Lazy, lazy_autobahn_debug_formatting
from rooms.runtime.direct_write import _send_now, _twisted_idle_tcp


class FakeTransport:
    """The attributes of twisted.internet.tcp.Connection the fast path reads."""

    def __init__(self, sock: Any) -> None:
        self.socket = sock
        self._tempDataLen = 0
        self._tempDataBuffer: list[bytes] = []
        self.dataBuffer = b""
        self.offset = 0
        self.TLS = False
        self.connected = True
        self.disconnecting = False
        self._writeDisconnected = False


def test_only_an_idle_plain_tcp_transport_sends_at_once() -> None:
    t = FakeTransport(None)
    assert _twisted_idle_tcp(t)
    t._tempDataLen = 5  # bytes queued by twisted: they must go first
    assert not _twisted_idle_tcp(t)
    t._tempDataLen = 0
    t.dataBuffer, t.offset = b"abcdef", 2  # a partly sent buffer
    assert not _twisted_idle_tcp(t)
    t.offset = 6
    assert _twisted_idle_tcp(t)
    for name, value in (("TLS", True), ("connected", False), ("disconnecting", True), ("_writeDisconnected", True)):
        other = FakeTransport(None)
        setattr(other, name, value)
        assert not _twisted_idle_tcp(other), name
    assert not _twisted_idle_tcp(object())  # not twisted's: never


def test_send_now_returns_what_the_socket_did_not_take() -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        assert _send_now(a, b"hello") == b""
        assert b.recv(10) == b"hello"
        # Fill the socket's buffer: what does not fit comes back, in order.
        big = bytes(range(256)) * 40_000
        rest = _send_now(a, big)
        assert 0 < len(rest) < len(big) and big.endswith(rest)
        assert _send_now(a, b"more") == b"more"  # full: nothing taken
        b.close()
        assert _send_now(a, b"x") == b"x"  # a dead socket: left to twisted's own write
    finally:
        a.close()
        b.close()


def test_autobahn_debug_formatting_is_lazy_and_unchanged() -> None:
    from pprint import pformat

    from autobahn import util
    from autobahn.twisted import websocket as twisted_websocket
    from autobahn.websocket import protocol

    value = [("autoPingInterval", 20, "WebSocketServerFactory")] * 5
    lazy = _Lazy(pformat, value)
    assert str(lazy) == pformat(value) and f"\n{lazy}" == "\n" + pformat(value)
    lazy_autobahn_debug_formatting()
    patched = protocol.hltype
    lazy_autobahn_debug_formatting()  # idempotent: not wrapped twice
    assert protocol.hltype is patched and patched.lazy_of is util.hltype
    for module in (protocol, twisted_websocket):
        for name, args in (("hltype", (test_autobahn_debug_formatting_is_lazy_and_unchanged,)), ("hlval", (42,))):
            made = getattr(module, name)(*args)
            assert isinstance(made, _Lazy)  # nothing formatted yet
            assert str(made) == getattr(util, name)(*args) and f"{made}" == str(made)
    assert str(protocol.pformat(value)) == pformat(value)
    timings = protocol.Timings()
    timings.track("x")
    assert isinstance(str(timings), str) and "x" in str(timings)
