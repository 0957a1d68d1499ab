"""Connect/disconnect cycles leave nothing behind (issue 11's leak test).

10,000 WebSocket sessions against one real daphne process, 20 at a time, in
rooms that wake and hibernate: the server's memory and thread count after the
run stay within a small bound of what they were after a warm-up (caches,
the 10-minute de-duplication window), and every actor run that woke also
went back to sleep.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.client import WsClient, room_name
from tests.e2e.server import DormServer, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CYCLES = 10_000
WARMUP = 2_000
PARALLEL = 20
# Allowed growth after the warm-up: allocator noise and caches, not a leak
# (10,000 sessions leaking 1 KiB each would already be ~10 MiB).
RSS_GROWTH_LIMIT_KIB = 8 * 1024


def _status(server: DormServer) -> dict[str, int]:
    assert server.process is not None
    fields = {}
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


async def _cycles(server: DormServer, n: int, rooms: list[str]) -> None:
    async def one(i: int) -> None:
        ws = await WsClient.open(server.url(rooms[i % len(rooms)], userId=f"u{i % 50}"))
        if i % 10 == 0:
            await ws.draw({"i": i})
        await ws.close()

    for start in range(0, n, PARALLEL):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + PARALLEL))))


async def test_ten_thousand_sessions_leave_no_growth(tmp_path: Path) -> None:
    # DEBUG off as in production: with it on, Django keeps the last 9,000
    # queries in memory, which reads as a leak here.
    server = start_server(
        "daphne", tmp_path, extra_env={"DORM_HIBERNATE_AFTER_SECONDS": "0.5", "DJANGO_DEBUG": "false"}
    )
    try:
        rooms = [room_name("leak") for _ in range(10)]
        await _cycles(server, WARMUP, rooms)
        await asyncio.sleep(1.5)  # the rooms hibernate
        before = _status(server)
        await _cycles(server, CYCLES - WARMUP, rooms)
        await asyncio.sleep(1.5)
        after = _status(server)
        growth = after["VmRSS"] - before["VmRSS"]
        print(f"RSS {before['VmRSS']} -> {after['VmRSS']} KiB, threads {before['Threads']} -> {after['Threads']}")
        assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew {growth} KiB over {CYCLES - WARMUP} sessions"
        assert after["Threads"] <= before["Threads"] + 2
        # Every session's actor run closed: rooms woke and slept, none stuck awake.
        open_runs = server.query("SELECT COUNT(*) FROM rooms_actorrun WHERE slept_at IS NULL")[0][0]
        assert open_runs == 0, open_runs
    finally:
        server.stop()
