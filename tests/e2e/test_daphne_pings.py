"""daphne's pings under Dorm's server class (rooms.daphne_server, which
checks each socket when its ping is due instead of sweeping all of them): a
client that stops answering is cut within interval + 2 s sweep + timeout,
one that answers stays, with real daphne and real sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.e2e.client import WsClient, event, room_name
from tests.e2e.server import start_server
from tests.e2e.test_backpressure import NonReader

pytestmark = pytest.mark.e2e

# An interval longer than the sweep: the first check after the connect finds
# the ping not yet due, so the ping comes from a rescheduled check.
PING_INTERVAL, PING_TIMEOUT, SWEEP = 3, 1, 2


async def test_a_client_that_stops_answering_pings_is_cut_and_one_that_answers_stays(tmp_path: Path) -> None:
    server = start_server(
        "daphne", tmp_path, extra_args=["--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT)]
    )
    try:
        room = room_name("pings")
        answering = await WsClient.open(server.url(room, userId="answering"))  # its library answers pings
        silent = NonReader(server.port, f"/ws/{room}?userId=silent")  # reads, never answers
        opened = time.monotonic()
        ended = await asyncio.to_thread(silent.connection_ended, 20)
        took = time.monotonic() - opened
        assert ended, "a client that never answers pings was not cut within 20 s"
        # Its first ping goes out in the first sweep past the interval; the
        # timeout runs from there. 2 s of slack for a loaded machine.
        assert took < PING_INTERVAL + SWEEP + PING_TIMEOUT + 2, f"cut after {took:.1f} s"
        # The answering client was pinged all along and is still served.
        await asyncio.sleep(PING_INTERVAL + SWEEP + PING_TIMEOUT)
        answering.assert_open()
        other = await WsClient.open(server.url(room, userId="other"))
        await other.draw({"x": 1})
        await answering.wait_for(event("draw"))
        await other.close()
        await answering.close()
    finally:
        server.stop()
