"""``rooms.uvicorn_server``: uvicorn's sans-I/O protocol with Dorm's wraps,
a real protocol object on a real socket pair: a socket dropped without a
closing handshake frees websockets' state machine by reference count (as
uvicorn ships it, a cycle with its parser keeps it for the cyclic
collector); the application's queue is the slotted one and still carries
every message; the handshake's request and response go once it is
accepted."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import Iterator

import pytest

from rooms import uvicorn_server
from rooms.runtime.app_queue import ApplicationQueue
from tests.fixtures.uvicorn_pair import Served, serve

MISSING = object()
WRAPPED = ("__init__", "start_keepalive", "send_receive_event_to_app", "connection_lost")


@pytest.fixture
def shipped() -> Iterator[type]:
    """uvicorn's protocol class as uvicorn ships it, whatever ran before;
    the class as it was is put back after the test."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as cls

    before = {name: cls.__dict__[name] for name in WRAPPED}
    edge_answer = cls.__dict__.get("edge_answer", MISSING)
    for name, func in before.items():
        setattr(cls, name, getattr(func, "__wrapped__", func))
    if edge_answer is not MISSING:
        del cls.edge_answer
    yield cls
    for name, func in before.items():
        setattr(cls, name, func)
    if edge_answer is not MISSING:
        cls.edge_answer = edge_answer
    elif "edge_answer" in cls.__dict__:
        del cls.edge_answer


async def _dropped(served: Served) -> weakref.ref:
    """The client sends a message, then closes its socket without a close
    frame; a weak reference to the server's state machine once the
    application heard of it, with the protocol's own reference removed."""
    served.accept.set()
    await served.send_text("hello")
    assert (await asyncio.wait_for(served.received.get(), 5)) == {"type": "websocket.receive", "text": "hello"}
    served.sock.shutdown(socket.SHUT_WR)  # a FIN, no close frame
    assert (await asyncio.wait_for(served.received.get(), 5))["type"] == "websocket.disconnect"
    conn = served.protocol.conn
    served.protocol.conn = None
    return weakref.ref(conn)


async def test_as_shipped_a_dropped_socket_leaves_its_state_machine_in_a_cycle(shipped: type) -> None:
    """What the wrap is for (if this fails, uvicorn or websockets fixed it)."""
    gc.disable()
    try:
        async with serve("websockets-sansio") as served:
            gone = await _dropped(served)
            assert gone() is not None
            gc.collect()
            assert gone() is None
    finally:
        gc.enable()


async def test_wrapped_a_dropped_socket_frees_its_state_machine_by_reference_count(shipped: type) -> None:
    assert uvicorn_server.install()
    assert uvicorn_server.install()  # idempotent: wrapped once
    assert getattr(shipped.connection_lost, "__wrapped__", None) is not None
    assert not hasattr(shipped.connection_lost.__wrapped__, "__wrapped__")
    gc.disable()
    try:
        async with serve("websockets-sansio") as served:
            assert type(served.protocol.queue) is ApplicationQueue
            gone = await _dropped(served)
            assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
    finally:
        gc.enable()


async def test_wrapped_the_handshake_goes_once_accepted_and_messages_flow(shipped: type) -> None:
    assert uvicorn_server.install()
    async with serve("websockets-sansio") as served:
        assert served.protocol.request is not None  # the application has not accepted yet
        served.accept.set()
        for i in range(3):
            await served.send_text(f"m{i}")
        got = [await asyncio.wait_for(served.received.get(), 5) for _ in range(3)]
        assert [m["text"] for m in got] == ["m0", "m1", "m2"]
        assert served.protocol.request is None and served.protocol.response is None
        await served.send({"type": "websocket.send", "text": "reply"})
        assert [f.data for f in await served.frames(1)] == [b"reply"]
        served.close.set()
        frames = await served.frames(1)
        assert frames[0].opcode.name == "CLOSE"


async def test_wrapped_the_application_answers_small_text_in_the_read(shipped: type) -> None:
    """What ``direct_write.answer_at_edge`` sets: a message it answers is
    not queued, and does not pause the socket's reads; the others are, in
    order."""
    assert uvicorn_server.install()
    async with serve("websockets-sansio") as served:
        offered: list[str] = []

        def answer(text: str) -> bool:
            offered.append(text)
            return text.startswith("keepalive")

        served.protocol.edge_answer = answer
        served.accept.set()
        for text in ("keepalive 1", "m1", "keepalive 2", "x" * 2000, "m2"):
            await served.send_text(text)
        got = [await asyncio.wait_for(served.received.get(), 5) for _ in range(3)]
        assert [m["text"] for m in got] == ["m1", "x" * 2000, "m2"]
        assert offered == ["keepalive 1", "m1", "keepalive 2", "m2"]  # not the message over EDGE_ANSWER_BYTES
        await served.send_text("keepalive 3")
        await asyncio.sleep(0.05)
        assert offered[-1] == "keepalive 3" and served.received.empty() and not served.protocol.read_paused


def test_without_uvicorns_sansio_protocol_loaded_nothing_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, uvicorn_server.SANSIO_MODULE)
    assert uvicorn_server.install() is False
