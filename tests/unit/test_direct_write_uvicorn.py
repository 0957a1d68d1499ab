"""Direct frame writes (``rooms.runtime.direct_write``) on uvicorn's two
WebSocket implementations, each a real protocol object on a real socket
pair, read by websockets' own client state machine: frames written directly
interleave in order with the ASGI ``send``; the writer declines before the
accept and after the close, so those go through ``send`` (or nowhere)."""

from __future__ import annotations

import asyncio
import socket
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from rooms.runtime.direct_write import NOT_WRITTEN, QUEUED, SENT, direct_writer, text_frame

IMPLEMENTATIONS = ["websockets-sansio", "websockets"]

# The legacy implementation (still supported with an explicit --ws websockets) warns about itself.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets.legacy.*"),
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
]


def protocol_class(ws: str) -> type:
    if ws == "websockets-sansio":
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

        return WebSocketsSansIOProtocol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # websockets' legacy protocol warns on import
        from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol

    return WebSocketProtocol


@dataclass
class Served:
    send: Any  # the ASGI send of the socket (captured before the accept)
    accept: asyncio.Event  # set it: the application accepts
    close: asyncio.Event  # set it: the application closes with 1000
    client: ClientProtocol
    sock: socket.socket

    async def frames(self, n: int) -> list[Frame]:
        """The next ``n`` data frames the client reads (the 101 response skipped)."""
        loop = asyncio.get_running_loop()
        got: list[Frame] = []
        while len(got) < n:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 5)
            assert data, "the server closed the socket"
            self.client.receive_data(data)
            for event in self.client.events_received():
                if isinstance(event, Response):
                    assert event.status_code == 101, event
                elif event.opcode in (Opcode.TEXT, Opcode.CLOSE):
                    got.append(event)
        return got


@pytest.fixture(params=IMPLEMENTATIONS)
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    loop = asyncio.get_running_loop()
    sends: asyncio.Queue[Any] = asyncio.Queue()
    accept, close = asyncio.Event(), asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        sends.put_nowait(send)
        await accept.wait()
        await send({"type": "websocket.accept"})
        await close.wait()
        await send({"type": "websocket.close", "code": 1000})

    config = Config(app=app, ws=request.param, lifespan="off", log_level="warning", ws_ping_interval=None)
    config.load()
    server_sock, client_sock = socket.socketpair()
    client_sock.setblocking(False)
    proto = protocol_class(request.param)(config=config, server_state=ServerState(), app_state={})
    await loop.connect_accepted_socket(lambda: proto, server_sock)
    client = ClientProtocol(parse_uri("ws://dorm.test/ws/room"))
    client.send_request(client.connect())
    await loop.sock_sendall(client_sock, b"".join(client.data_to_send()))
    send = await asyncio.wait_for(sends.get(), 5)
    try:
        yield Served(send, accept, close, client, client_sock)
    finally:
        proto.transport.close()
        client_sock.close()
        await asyncio.sleep(0)


async def test_uvicorn_gets_a_direct_writer_that_waits_for_the_accept(served: Served) -> None:
    write = direct_writer(served.send)
    assert write is not None, "no direct writer for this uvicorn protocol: fan-out would take the ASGI send"
    assert write(text_frame("too early")) == NOT_WRITTEN  # the handshake is not answered yet
    served.accept.set()
    for _ in range(50):
        if write(text_frame("probe")) != NOT_WRITTEN:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the writer never opened after the accept")
    assert [f.data for f in await served.frames(1)] == [b"probe"]


async def test_direct_frames_and_asgi_sends_arrive_in_order(served: Served) -> None:
    served.accept.set()
    write = direct_writer(served.send)
    assert write is not None
    while write(text_frame("0")) == NOT_WRITTEN:
        await asyncio.sleep(0.01)
    for i in range(1, 7):
        if i % 2:
            await served.send({"type": "websocket.send", "text": str(i)})
        else:
            assert write(text_frame(str(i))) in (SENT, QUEUED)
    frames = await served.frames(7)
    assert [f.data.decode() for f in frames] == [str(i) for i in range(7)]
    assert all(f.opcode is Opcode.TEXT and f.fin and not f.rsv1 for f in frames)


async def test_the_writer_declines_once_the_application_closed(served: Served) -> None:
    served.accept.set()
    write = direct_writer(served.send)
    assert write is not None
    while write(text_frame("open")) == NOT_WRITTEN:
        await asyncio.sleep(0.01)
    served.close.set()
    frames = await served.frames(2)  # (the legacy protocol's send then waits for the client's close reply)
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE]
    assert write(text_frame("after the close")) == NOT_WRITTEN
