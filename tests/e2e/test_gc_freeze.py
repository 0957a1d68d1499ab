"""A real server freezes what survives its full garbage collections and
thaws it all every ``DORM_GC_THAW_SECONDS`` (rooms/runtime/gc_freeze.py),
read from the process's /metrics.

Under daphne (the watch starts from its reactor) and under uvicorn's
``websockets-sansio`` protocol (from its lifespan) a closed socket's
objects are freed while frozen, by their reference counts, without waiting
for a thaw. uvicorn's legacy ``--ws websockets`` protocol leaves them in
reference cycles that only a thaw frees, which is why that protocol keeps
Python's own collector unless the setting asks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.client import WsClient, room_name
from tests.e2e.server import DormServer, start_server
from tests.e2e.test_leaks import METRICS_TOKEN, process_gauges

pytestmark = pytest.mark.e2e

SOCKETS = 100
THAW_SECONDS = 6.0
METRICS = {"DORM_METRICS_TOKEN": METRICS_TOKEN, "DJANGO_SECURE_SSL_REDIRECT": "false"}


async def _gauges(server: DormServer) -> dict[str, int]:
    return await asyncio.to_thread(process_gauges, server)


async def _next_thaw(server: DormServer, thaws: int) -> dict[str, int]:
    """The gauges just after the process's next thaw."""
    deadline = asyncio.get_running_loop().time() + THAW_SECONDS * 2
    while asyncio.get_running_loop().time() < deadline:
        gauges = await _gauges(server)
        if gauges["gc_thaws_total"] > thaws:
            return gauges
        await asyncio.sleep(0.1)
    raise AssertionError(f"no thaw in {THAW_SECONDS * 2} s")


async def _freeze_then_close(server: DormServer, how: str = "close") -> tuple[dict[str, int], dict[str, int]]:
    """``SOCKETS`` sockets in one room, frozen by the next thaw, then closed
    (``how``: "close", the closing handshake; "drop", a TCP close without
    one): the gauges before they opened and once they were frozen."""
    # After a thaw: what startup and the first requests left is frozen too.
    idle = await _next_thaw(server, (await _gauges(server))["gc_thaws_total"])
    room = room_name("gc")
    clients = list(await asyncio.gather(*(WsClient.open(server.url(room, userId=f"u{i}")) for i in range(SOCKETS))))
    try:
        await asyncio.sleep(0.3)  # the joins' presence updates go out
        busy = await _next_thaw(server, idle["gc_thaws_total"])
        # Each socket's protocol, consumer and scope (50-150 objects) are
        # frozen now, out of every full collection until the next thaw.
        assert (busy["gc_frozen_objects"] - idle["gc_frozen_objects"]) / SOCKETS > 30, (idle, busy)
        # The room works on frozen objects: a draw reaches every other socket.
        seq = await clients[0].draw({"x": 1})
        for other in clients[1:]:
            await other.wait_for(lambda f: f.get("type") == "draw" and f.get("seq") == seq)
    finally:
        await asyncio.gather(*((c.drop() if how == "drop" else c.close()) for c in clients), return_exceptions=True)
    return idle, busy


@pytest.mark.parametrize("how", ["close", "drop"])
@pytest.mark.parametrize("flavor", ["daphne", "uvicorn"])
async def test_closed_sockets_are_freed_while_frozen(tmp_path: Path, flavor: str, how: str) -> None:
    """With a closing handshake or without one: uvicorn's protocol left a
    dropped socket's websockets state machine in a cycle with its parser
    (``rooms/uvicorn_server.py``)."""
    server = start_server(flavor, tmp_path, extra_env={"DORM_GC_THAW_SECONDS": str(THAW_SECONDS), **METRICS})
    try:
        idle, busy = await _freeze_then_close(server, how)
        await asyncio.sleep(2.5)  # daphne lets a closed connection go at its next application check (1 s)
        closed = await _gauges(server)
        assert closed["gc_thaws_total"] == busy["gc_thaws_total"], "a thaw came between: the test proves nothing"
        assert closed["connections"] == 0
        # The next thaw tells what was still alive (the room's actor, awake
        # until it hibernates; whatever else the process built meanwhile, such
        # as a first use's caches) from what only waited for it.
        thawed = await _next_thaw(server, closed["gc_thaws_total"])
        # What the sockets added to the frozen set has left it before any
        # thaw: the thaw finds little of it left to free.
        added = busy["gc_frozen_objects"] - thawed["gc_frozen_objects"]
        waited = closed["gc_frozen_objects"] - thawed["gc_frozen_objects"]
        print(f"{flavor} ({how}): {added / SOCKETS:.0f} objects frozen per socket, "
              f"{waited / SOCKETS:.1f} per socket still frozen after it closed, freed by the thaw")
        assert waited < added * 0.15, (idle, busy, closed, thawed)
    finally:
        server.stop()


async def test_uvicorn_freezes_by_default_with_its_default_protocol(tmp_path: Path) -> None:
    server = start_server("uvicorn", tmp_path, extra_env=METRICS)
    try:
        assert (await _gauges(server))["gc_thaw_interval_seconds"] == 600
    finally:
        server.stop()


LEGACY = ["--ws", "websockets"]  # uvicorn's legacy protocol, deprecated by uvicorn


async def test_uvicorns_legacy_protocol_keeps_pythons_collector_by_default(tmp_path: Path) -> None:
    server = start_server("uvicorn", tmp_path, extra_env=METRICS, extra_args=LEGACY, name="uvicorn-legacy")
    try:
        assert (await _gauges(server))["gc_thaw_interval_seconds"] == 0
    finally:
        server.stop()


async def test_uvicorns_legacy_protocol_frozen_leaves_closed_sockets_to_the_thaw(tmp_path: Path) -> None:
    server = start_server("uvicorn", tmp_path, extra_env={"DORM_GC_THAW_SECONDS": str(THAW_SECONDS), **METRICS},
                          extra_args=LEGACY, name="uvicorn-legacy")
    try:
        idle, busy = await _freeze_then_close(server)
        await asyncio.sleep(0.5)
        closed = await _gauges(server)
        thawed = await _next_thaw(server, closed["gc_thaws_total"])
        # The legacy protocol leaves each closed socket in cycles that only
        # the thaw found (the reason it keeps Python's collector by default).
        # If this fails, those cycles are gone: its default can be the others'.
        found = thawed["gc_thaw_collected_objects_total"] - closed["gc_thaw_collected_objects_total"]
        print(f"uvicorn --ws websockets: the thaw after {SOCKETS} sockets closed found {found} unreachable objects")
        assert found > SOCKETS * 30, (closed, thawed)
        assert thawed["gc_frozen_objects"] - idle["gc_frozen_objects"] < (busy["gc_frozen_objects"] - idle["gc_frozen_objects"]) * 0.15
    finally:
        server.stop()
