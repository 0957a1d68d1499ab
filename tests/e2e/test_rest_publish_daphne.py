"""A REST publish under a real daphne: the sync view reaches the actor on the
server's event loop, and its event is ordered with live WebSocket traffic."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.fixtures.servers import CLOSE_TIMEOUT_SECONDS, Server


async def recv(ws: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def test_rest_publish_is_ordered_with_the_clients_own_traffic(daphne_server: Server) -> None:
    server = daphne_server
    status, body = await asyncio.to_thread(server.request, "POST", "/api/rooms/", {"slug": "e2e"})
    assert status == 201, body
    n = 15
    async with websockets.connect(f"{server.ws}/ws/e2e?userId=u1", close_timeout=CLOSE_TIMEOUT_SECONDS) as ws, websockets.connect(
        f"{server.ws}/ws/e2e?userId=u2", close_timeout=CLOSE_TIMEOUT_SECONDS
    ) as watcher:
        assert (await recv(ws))["type"] == "welcome"
        assert (await recv(watcher))["type"] == "welcome"

        async def ws_traffic() -> None:
            for i in range(n):
                await ws.send(json.dumps({"type": "draw", "id": f"c{i}", "payload": {"ws": i}}))
                await asyncio.sleep(0.005)

        def publish(i: int) -> tuple[int, Any]:
            return server.request("POST", "/api/rooms/e2e/messages", {"type": "draw", "payload": {"rest": i}}, {"Idempotency-Key": f"r{i}"})

        async def rest_traffic() -> list[tuple[int, Any]]:
            return list(await asyncio.gather(*(asyncio.to_thread(publish, i) for i in range(n))))

        _, published = await asyncio.gather(ws_traffic(), rest_traffic())
        assert all(status == 201 for status, _ in published), published
        rest_seqs = {body["seq"] for _, body in published}

        # u1's own stream: acks for its frames, events for the REST ones, one
        # seq each, strictly in seq order.
        stream: list[tuple[int, str]] = []
        while len(stream) < 2 * n:
            frame = await recv(ws)
            if frame["type"] == "ack":
                stream.append((frame["seq"], "ack"))
            elif frame["type"] == "draw":
                stream.append((frame["seq"], "rest"))
                assert frame["userId"] == "ops" and "rest" in frame["payload"]
        assert [seq for seq, _ in stream] == list(range(1, 2 * n + 1))
        assert {seq for seq, origin in stream if origin == "rest"} == rest_seqs

        seen = []
        while len(seen) < 2 * n:
            frame = await recv(watcher)
            if frame["type"] == "draw":
                seen.append(frame["seq"])
        assert seen == list(range(1, 2 * n + 1))

    # The REST view of the log agrees, and a retried key is applied once.
    status, again = await asyncio.to_thread(publish, 0)
    assert status == 201 and again["seq"] == published[0][1]["seq"]
    status, page = await asyncio.to_thread(server.request, "GET", "/api/rooms/e2e/history?limit=1000")
    assert [e["seq"] for e in page["results"]] == list(range(1, 2 * n + 1))


async def test_a_publish_that_wakes_the_room_leaves_a_healthy_actor(daphne_server: Server) -> None:
    """The actor started by a REST request outlives it: later commits and joins work.

    (An actor that inherited the request's context would send its database
    calls to the request's executor thread, gone once the response is sent.)
    """
    server = daphne_server
    status, _ = await asyncio.to_thread(server.request, "POST", "/api/rooms/", {"slug": "cold"})
    assert status == 201

    def publish(i: int) -> tuple[int, Any]:
        return server.request("POST", "/api/rooms/cold/messages", {"type": "draw", "payload": {"i": i}})

    assert await asyncio.to_thread(publish, 0) == (201, {"seq": 1, "id": None})  # wakes the actor
    await asyncio.sleep(0.2)  # the first request's thread is gone
    assert await asyncio.to_thread(publish, 1) == (201, {"seq": 2, "id": None})
    async with websockets.connect(f"{server.ws}/ws/cold?userId=u1", close_timeout=CLOSE_TIMEOUT_SECONDS) as ws:
        welcome = await recv(ws)
        assert welcome["seq"] == 2 and [s["payload"]["i"] for s in welcome["state"]["strokes"]] == [0, 1]
        await ws.send(json.dumps({"type": "draw", "id": "c", "payload": {"i": 2}}))
        assert (await recv(ws)) == {"type": "ack", "id": "c", "seq": 3}
