"""A big room's presence updates, on a real daphne: they reach at most
``DORM_PRESENCE_FANOUT_PER_SECOND`` sockets a second, many rooms churning
at once share ``DORM_PRESENCE_PROCESS_FANOUT_PER_SECOND``, and nothing is
lost.

The budget is set low (100) so that a room of 40-70 connections is "big":
its window is 0.4-0.7 s instead of the base 100 ms.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.client import WsClient, announced, room_name
from tests.e2e.server import start_server
from tests.e2e.test_leaks import METRICS_TOKEN, process_gauges

pytestmark = pytest.mark.e2e


async def test_a_big_rooms_presence_updates_keep_to_the_fanout_budget_and_lose_nothing(tmp_path: Path) -> None:
    server = start_server("daphne", tmp_path, extra_env={"DORM_PRESENCE_FANOUT_PER_SECOND": "100"})
    clients: list[WsClient] = []
    try:
        room = room_name("budget")
        observer = await WsClient.open(server.url(room, userId="observer"))
        clients = list(await asyncio.gather(*(WsClient.open(server.url(room, userId=f"m{i}")) for i in range(39))))
        await asyncio.sleep(1.0)  # the members' own updates go out
        mark = observer.mark()
        # Churn for ~1.5 s: 30 joins, and 10 of the first members leave.
        for i in range(30):
            clients.append(await WsClient.open(server.url(room, userId=f"j{i}")))
            if i % 3 == 0:
                await clients[i // 3].close()
            await asyncio.sleep(0.03)
        await asyncio.sleep(1.5)  # the last window (at most 0.7 s) ends
        updates = observer.presence_updates_since(mark)
        times = [at for at, _ in updates]
        gaps = [b - a for a, b in zip(times, times[1:])]
        # 40 connections or more at every moment: windows of at least 0.4 s
        # (the base 100 ms would give a dozen updates 0.1 s apart).
        assert len(updates) >= 2 and min(gaps) >= 0.3, gaps  # a window of 0.4 s or more, less the network's jitter
        joined, left = announced(f for _, f in updates)
        assert joined == {f"j{i}" for i in range(30)}
        assert left == {f"m{i}" for i in range(10)}
        # A member who joins now gets the whole room in its welcome.
        late = await WsClient.open(server.url(room, userId="late"))
        clients.append(late)
        here = {p["userId"] for p in late.welcome["presence"]}
        assert here == {"observer", "late"} | {f"m{i}" for i in range(10, 39)} | {f"j{i}" for i in range(30)}
        clients.append(observer)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        server.stop()


async def test_rooms_churning_at_once_share_the_process_budget_and_lose_nothing(tmp_path: Path) -> None:
    """A reconnect storm over many rooms: their windows widen to a fair share
    of ``DORM_PRESENCE_PROCESS_FANOUT_PER_SECOND`` (set to 200 here: 8 rooms
    of 10-15 connections churning at once get windows of 0.4 s or more),
    and every join is still announced."""
    metrics = {"DORM_METRICS_TOKEN": METRICS_TOKEN, "DJANGO_SECURE_SSL_REDIRECT": "false"}
    server = start_server("daphne", tmp_path, extra_env={"DORM_PRESENCE_PROCESS_FANOUT_PER_SECOND": "200", **metrics})
    rooms = [room_name(f"share{r}") for r in range(8)]
    clients: list[WsClient] = []
    try:
        observers = [await WsClient.open(server.url(room, userId="observer")) for room in rooms]
        clients += observers
        # Each room fills to 10 first (its own updates, windows widening as
        # its neighbours churn too), then the marked churn: 5 joins each.
        clients += await asyncio.gather(*(WsClient.open(server.url(room, userId=f"m{i}")) for room in rooms for i in range(9)))
        await asyncio.sleep(1.5)
        marks = [o.mark() for o in observers]
        for i in range(5):
            clients += await asyncio.gather(*(WsClient.open(server.url(room, userId=f"j{i}")) for room in rooms))
            await asyncio.sleep(0.1)
        # /metrics shows the storm: the churning rooms' connections (80 or
        # more; over the budget of 200, updates ~0.5 s apart).
        assert (await asyncio.to_thread(process_gauges, server))["presence_churning_connections"] >= 80
        await asyncio.sleep(2.0)  # the last windows (about 0.6 s) end
        for observer, mark in zip(observers, marks):
            updates = observer.presence_updates_since(mark)
            times = [at for at, _ in updates]
            gaps = [b - a for a, b in zip(times, times[1:])]
            # The base window would give 5 updates 0.1 s apart.
            assert 1 <= len(updates) <= 3 and min(gaps, default=1.0) >= 0.3, gaps
            joined, _ = announced(f for _, f in updates)
            assert joined == {f"j{i}" for i in range(5)}
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        server.stop()
