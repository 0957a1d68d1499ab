"""Direct frame writes (``rooms.runtime.direct_write``) on uvicorn's two
WebSocket implementations, each a real protocol object on a real socket
pair, read by websockets' own client state machine: frames written directly
interleave in order with the ASGI ``send``; the writer declines before the
accept and after the close, so those go through ``send`` (or nowhere)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.frames import Opcode

from rooms.runtime.direct_write import NOT_WRITTEN, QUEUED, SENT, FrameWriter, direct_writer, text_frame
from tests.fixtures.uvicorn_pair import IMPLEMENTATIONS, Served, serve

# The legacy implementation (still supported with an explicit --ws websockets) warns about itself.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets.legacy.*"),
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
]


@pytest.fixture(params=IMPLEMENTATIONS)
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    async with serve(request.param) as s:
        yield s


async def accepted_writer(served: Served, first: str) -> FrameWriter:
    """The socket's direct writer, once the application accepted it and the
    writer took ``first`` (the accept's 101 goes out from the application's task)."""
    write = direct_writer(served.send)
    assert write is not None, "no direct writer for this uvicorn protocol: fan-out would take the ASGI send"
    assert write(text_frame("too early")) == NOT_WRITTEN  # the handshake is not answered yet
    served.accept.set()
    for _ in range(50):
        if write(text_frame(first)) != NOT_WRITTEN:
            return write
        await asyncio.sleep(0.01)
    raise AssertionError("the writer never opened after the accept")


async def test_uvicorn_gets_a_direct_writer_that_waits_for_the_accept(served: Served) -> None:
    await accepted_writer(served, "probe")
    assert [f.data for f in await served.frames(1)] == [b"probe"]


async def test_direct_frames_and_asgi_sends_arrive_in_order(served: Served) -> None:
    write = await accepted_writer(served, "0")
    for i in range(1, 7):
        if i % 2:
            await served.send({"type": "websocket.send", "text": str(i)})
        else:
            assert write(text_frame(str(i))) in (SENT, QUEUED)
    frames = await served.frames(7)
    assert [f.data.decode() for f in frames] == [str(i) for i in range(7)]
    assert all(f.opcode is Opcode.TEXT and f.fin and not f.rsv1 for f in frames)


async def test_the_writer_declines_once_the_application_closed(served: Served) -> None:
    write = await accepted_writer(served, "open")
    served.close.set()
    frames = await served.frames(2)  # (the legacy protocol's send then waits for the client's close reply)
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE]
    assert write(text_frame("after the close")) == NOT_WRITTEN
