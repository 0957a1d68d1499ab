"""daphne's reactor on uvloop (``DORM_EVENT_LOOP``, rooms/daphne_server.py):
a real daphne process runs on the loop the setting names, serves a room on
it (welcomes, a keepalive answered at the edge, a durable event and its
broadcast) and stops cleanly on SIGTERM, its sockets told 1001.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.client import WsClient, room_name
from tests.e2e.server import STOP_TIMEOUT_SECONDS, DormServer, start_server
from tests.e2e.test_leaks import LEAK_ENV, METRICS_TOKEN, process_gauges

pytestmark = pytest.mark.e2e


def event_loop_of(server: DormServer) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    loops = re.findall(r'^dorm_process_event_loop\{loop="(\w+)"\} 1\.0$', text, re.MULTILINE)
    assert len(loops) == 1, text[-2000:]
    return loops[0]


@pytest.mark.parametrize("setting", [None, "uvloop", "asyncio"])
async def test_daphne_serves_and_stops_on_the_loop_the_setting_names(tmp_path: Path, setting: str | None) -> None:
    env = dict(LEAK_ENV)
    if setting is not None:
        env["DORM_EVENT_LOOP"] = setting
    server = start_server("daphne", tmp_path, extra_env=env)
    try:
        assert event_loop_of(server) == (setting or "uvloop")
        room = room_name("loop")
        a = await WsClient.open(server.url(room, userId="a"))
        b = await WsClient.open(server.url(room, userId="b"))
        edge_before = process_gauges(server)["keepalives_at_edge"]
        await a.send("ping", {"t": 1})
        pong = await a.recv_until(lambda f: f.get("type") == "pong")
        assert pong["payload"] == {"t": 1}
        assert process_gauges(server)["keepalives_at_edge"] == edge_before + 1
        seq = await a.draw({"x": 1, "y": 2})
        drawn = await b.recv_until(lambda f: f.get("type") == "draw")
        assert drawn["seq"] == seq

        # SIGTERM: daphne's signal handler runs on this loop too; the sockets
        # get 1001 (going away) and the process exits by itself.
        process = server.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        assert await a.wait_closed(STOP_TIMEOUT_SECONDS) == 1001
        assert await b.wait_closed(STOP_TIMEOUT_SECONDS) == 1001
        assert process.wait(STOP_TIMEOUT_SECONDS) == 0
        assert "Traceback" not in server.log_text()
    finally:
        server.stop()


async def test_a_setting_that_names_no_loop_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="DORM_EVENT_LOOP must be one of uvloop, asyncio"):
        start_server("daphne", tmp_path, extra_env={**LEAK_ENV, "DORM_EVENT_LOOP": "libuv"}, attempts=1)
