"""How daphne's asyncio reactor runs under Dorm (``rooms.daphne_server``):
socket events dispatched without twisted's logging context
(``call_logging_errors``) and the reactor moved onto uvloop's event loop
(``move_reactor_to_uvloop``).

Each scenario runs over real TCP sockets on a reactor of its own, as twisted
dispatches on asyncio's loop and as Dorm does on asyncio's and on uvloop's:
what the protocol receives, how the connection ends and what is logged must
be the same.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import asyncioreactor, error
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.python import log as legacy_log

import uvloop

from rooms import daphne_server
from rooms.daphne_server import call_logging_errors, move_reactor_to_uvloop


class Recorder(Protocol):
    """Records what arrives; raises on a frame that asks it to."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))
        if b"boom" in data:
            raise ValueError("the protocol failed")

    def connectionLost(self, reason: Any = None) -> None:
        self.events.append(("lost", reason.type.__name__ if reason is not None else None))


class Recording(Factory):
    """Builds a ``Recorder`` per connection, all writing to ``events``."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.protocols: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        self.protocols.append(Recorder(self.events))
        return self.protocols[-1]


def read_callback(loop: asyncio.AbstractEventLoop, transport: Any) -> Any:
    """What asyncio's loop calls when ``transport``'s socket is readable."""
    return loop._selector.get_key(transport.fileno()).data[0]._callback  # type: ignore[attr-defined]


@pytest.fixture
def dispatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Choose how the asyncio reactor dispatches socket events ("twisted" or
    "lean") for sockets registered from then on; restored after the test."""

    def choose(kind: str) -> None:
        monkeypatch.setattr(asyncioreactor, "callWithLogger", legacy_log.callWithLogger)
        if kind == "lean":
            daphne_server.reactor_events_without_log_context()

    yield choose


def run_scenario(sends: list[bytes], ending: str, *, uv: bool = False) -> tuple[list[Any], int, Any]:
    """One client connection to a fresh reactor (moved to uvloop first when
    ``uv``): ``sends`` (each a send() call, with a turn of the loop between),
    then ``ending``: "close" (FIN), "reset" (RST) or "none". Returns the
    protocol's events, the failures twisted's log saw and the function the
    server socket's reads go through (asyncio's loop only; None on uvloop)."""
    reactor = asyncioreactor.AsyncioSelectorReactor(asyncio.new_event_loop())
    if uv:
        assert move_reactor_to_uvloop(reactor)
    loop = reactor._asyncioEventloop
    events: list[Any] = []
    failures: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    factory = Recording(events)
    protocols = factory.protocols
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))

    def turn(seconds: float = 0.02) -> None:
        loop.run_until_complete(asyncio.sleep(seconds))

    try:
        turn()
        handle = None
        if protocols and not uv:
            handle = read_callback(loop, protocols[0].transport)
        for data in sends:
            client.sendall(data)
            turn()
        if ending == "close":
            client.shutdown(socket.SHUT_WR)
        elif ending == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        for _ in range(5):
            turn()
        return events, len(failures), handle
    finally:
        globalLogPublisher.removeObserver(observe)
        client.close()
        port.stopListening()
        for protocol in protocols:
            if protocol.transport is not None and protocol.transport.connected:
                protocol.transport.abortConnection()
        turn()
        loop.close()


SCENARIOS = {
    "frames then FIN": ([b"hello", b"world"], "close"),
    "frames then RST": ([b"hello"], "reset"),
    "the protocol raises": ([b"ok", b"boom", b"after"], "none"),
    "nothing then FIN": ([], "close"),
}


@pytest.mark.parametrize("uv", [False, True], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_as_twisted(dispatch: Callable[[str], None], name: str, uv: bool) -> None:
    sends, ending = SCENARIOS[name]
    dispatch("twisted")
    expected_events, expected_failures, twisted_handle = run_scenario(sends, ending)
    dispatch("lean")
    events, failures, lean_handle = run_scenario(sends, ending, uv=uv)
    assert twisted_handle is legacy_log.callWithLogger
    if not uv:
        assert lean_handle is call_logging_errors  # the lean dispatch is the one taken
    # TCP may merge two sends into one read: compare the bytes in order.
    assert b"".join(e[1] for e in events if e[0] == "data") == b"".join(e[1] for e in expected_events if e[0] == "data")
    assert [e for e in events if e[0] == "lost"] == [e for e in expected_events if e[0] == "lost"]
    assert failures == expected_failures


@pytest.mark.parametrize("uv", [False, True], ids=["asyncio", "uvloop"])
def test_how_each_ending_is_reported(dispatch: Callable[[str], None], uv: bool) -> None:
    # Pinned, so that the comparison above cannot pass by both sides being wrong.
    dispatch("lean")
    assert run_scenario([b"x"], "close", uv=uv)[0][-1] == ("lost", error.ConnectionDone.__name__)
    assert run_scenario([b"x"], "reset", uv=uv)[0][-1] == ("lost", error.ConnectionLost.__name__)
    events, failures, _ = run_scenario([b"boom"], "none", uv=uv)
    assert events[-1] == ("lost", ValueError.__name__) and failures == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sends=st.lists(st.binary(min_size=1, max_size=70_000), max_size=4),
    ending=st.sampled_from(["close", "reset", "none"]),
    uv=st.booleans(),
)
def test_any_bytes_arrive_whole_and_in_order(dispatch: Callable[[str], None], sends: list[bytes], ending: str, uv: bool) -> None:
    dispatch("lean")
    sends = [s.replace(b"boom", b"b00m") for s in sends]
    events, failures, _ = run_scenario(sends, ending, uv=uv)
    received = b"".join(e[1] for e in events if e[0] == "data")
    if ending != "reset":  # a reset may discard what was not read yet
        assert received == b"".join(sends)
    assert failures == 0


def test_paused_socket_is_not_read_until_resumed(dispatch: Callable[[str], None]) -> None:
    """Flow control (``pauseProducing`` removes the reader, ``resumeProducing``
    adds it back) keeps working: the re-added reader dispatches leanly."""
    dispatch("lean")
    loop = asyncio.new_event_loop()
    reactor = asyncioreactor.AsyncioSelectorReactor(loop)
    events: list[Any] = []
    factory = Recording(events)
    protocols = factory.protocols
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        loop.run_until_complete(asyncio.sleep(0.02))
        transport = protocols[0].transport
        transport.pauseProducing()
        client.sendall(b"held")
        loop.run_until_complete(asyncio.sleep(0.05))
        assert events == []
        transport.resumeProducing()
        assert read_callback(loop, transport) is call_logging_errors
        loop.run_until_complete(asyncio.sleep(0.05))
        assert events == [("data", b"held")]
    finally:
        client.close()
        port.stopListening()
        transport.abortConnection()
        loop.run_until_complete(asyncio.sleep(0.02))
        loop.close()


def test_errors_are_logged_with_the_sockets_prefix_and_go_no_further() -> None:
    class Selectable:
        def logPrefix(self) -> str:
            return "conn-7"

    seen: list[Any] = []
    globalLogPublisher.addObserver(seen.append)
    try:

        def fails() -> None:
            raise RuntimeError("late failure")

        assert call_logging_errors(Selectable(), fails) is None
        assert call_logging_errors(Selectable(), lambda a, b: a + b, 2, 3) == 5
    finally:
        globalLogPublisher.removeObserver(seen.append)
    errors = [e for e in seen if e.get("isError")]
    assert len(errors) == 1 and errors[0]["system"] == "conn-7"

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call_logging_errors(Selectable(), interrupted)


# -- the reactor on uvloop's loop ----------------------------------------------------


def test_the_reactor_moves_to_uvloop_with_its_sockets_and_executor() -> None:
    from concurrent.futures import ThreadPoolExecutor

    old = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asgi-threads")
    old.set_default_executor(executor)
    reactor = asyncioreactor.AsyncioSelectorReactor(old)
    readers = set(reactor.getReaders())
    assert readers  # its waker
    assert move_reactor_to_uvloop(reactor)
    loop = reactor._asyncioEventloop
    assert isinstance(loop, uvloop.Loop) and old.is_closed()
    assert set(reactor.getReaders()) == readers
    # daphne's ASGI_THREADS executor goes with it.
    import threading

    name = loop.run_until_complete(loop.run_in_executor(None, lambda: threading.current_thread().name))
    assert name.startswith("asgi-threads")
    assert move_reactor_to_uvloop(reactor)  # idempotent
    assert reactor._asyncioEventloop is loop

    # The waker (what a signal or wakeUp() writes to) is watched by the new
    # loop: a wake is read there.
    drained: list[bool] = []
    waker = reactor.waker
    original_read = waker.doRead
    waker.doRead = lambda: (drained.append(True), original_read())[1]  # type: ignore[method-assign]
    reactor.wakeUp()
    loop.run_until_complete(asyncio.sleep(0.05))
    assert drained

    # It runs: a timer, a call from another thread (call_soon_threadsafe),
    # then a stop, on the new loop.
    seen: list[str] = []

    def from_thread() -> None:
        seen.append("thread")
        reactor.stop()

    def start() -> None:
        seen.append("timer")
        threading.Thread(target=lambda: reactor.callFromThread(from_thread)).start()

    reactor.callLater(0.01, start)
    reactor.callLater(10, lambda: (seen.append("timeout"), reactor.stop()))
    reactor.run(installSignalHandlers=False)
    assert seen == ["timer", "thread"]
    executor.shutdown()


def test_a_loop_with_work_scheduled_is_kept() -> None:
    reactor = asyncioreactor.AsyncioSelectorReactor(asyncio.new_event_loop())
    call = reactor.callLater(5, lambda: None)
    old = reactor._asyncioEventloop
    assert not move_reactor_to_uvloop(reactor)
    assert reactor._asyncioEventloop is old and not old.is_closed()
    call.cancel()
    old.call_soon(lambda: None)  # scheduled on the loop directly
    assert not move_reactor_to_uvloop(reactor)
    assert reactor._asyncioEventloop is old
    old.close()


def test_the_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="DORM_EVENT_LOOP must be one of uvloop, asyncio"):
        daphne_server.install("libuv")
    moved: list[Any] = []
    monkeypatch.setattr(daphne_server, "move_reactor_to_uvloop", moved.append)
    daphne_server.install("asyncio")
    assert moved == []
    daphne_server.install("uvloop")
    assert moved == [daphne_server.reactor]


def test_without_uvloop_installed_asyncios_loop_stays(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails
    reactor = asyncioreactor.AsyncioSelectorReactor(asyncio.new_event_loop())
    old = reactor._asyncioEventloop
    assert not move_reactor_to_uvloop(reactor)
    assert reactor._asyncioEventloop is old
    assert "uvloop is not installed" in caplog.text
    old.close()
