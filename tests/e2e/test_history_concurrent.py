"""Paging through history over HTTP while 5 WebSocket clients write (real
daphne, SQLite in WAL mode): every event is seen exactly once across pages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.fixtures.servers import CLOSE_TIMEOUT_SECONDS, Server

WRITERS = 5
EACH = 30


async def test_pages_read_during_concurrent_writes_skip_and_repeat_nothing(daphne_server: Server) -> None:
    server = daphne_server
    status, _ = await asyncio.to_thread(server.request, "POST", "/api/rooms/", {"slug": "busy"})
    assert status == 201
    done = asyncio.Event()
    # Writers pause half-way until the reader has read pages of the growing
    # log, so the reads provably interleave with the writes.
    reader_midway = asyncio.Event()

    async def write(w: int) -> None:
        async with websockets.connect(f"{server.ws}/ws/busy?userId=w{w}", close_timeout=CLOSE_TIMEOUT_SECONDS) as ws:
            for i in range(EACH):
                await ws.send(json.dumps({"type": "draw", "id": f"{w}-{i}", "payload": {"w": w, "i": i}}))
                if i == EACH // 2:
                    await asyncio.wait_for(reader_midway.wait(), 30)
                elif i % 5 == 4:
                    await asyncio.sleep(0.01)  # spread the writes over the reads
            acks = 0
            while acks < EACH:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
                acks += frame["type"] == "ack"

    async def all_writes() -> None:
        await asyncio.gather(*(write(w) for w in range(WRITERS)))
        done.set()

    seen: list[int] = []
    pages_during_writes = 0

    async def read() -> None:
        nonlocal pages_during_writes
        since = 0
        while len(seen) < WRITERS * EACH:
            writing = not done.is_set()
            status, page = await asyncio.to_thread(server.request, "GET", f"/api/rooms/busy/history?since={since}&limit=7")
            assert status == 200, page
            results: list[dict[str, Any]] = page["results"]
            seen.extend(e["seq"] for e in results)
            if results:
                since = results[-1]["seq"]
                pages_during_writes += writing
                if pages_during_writes >= 3:
                    reader_midway.set()
            else:
                await asyncio.sleep(0.005)

    await asyncio.wait_for(asyncio.gather(all_writes(), read()), 90)
    assert seen == list(range(1, WRITERS * EACH + 1))
    assert pages_during_writes >= 3  # the pages really were read while the log grew
