"""A scripted session with known numbers, and how to read the meter's rows.

Used by the embedded and the distributed metering tests: three clients join
one after another, send known frames, and leave one after another; every step
waits for its effect, so the deliveries are known exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from billing.histogram import bucket_of
from tests.e2e.client import WsClient, ack_for, of_type

BROADCAST_TYPES = ("user_joined", "user_left", "draw", "cursor")
COUNTERS = (
    "connections_opened",
    "connections_closed",
    "peak_connections",
    "messages_in",
    "bytes_in",
    "messages_out",
    "bytes_out",
    "events_written",
    "rows_read",
    "rows_written",
    "storage_bytes_written",
    "alarms_fired",
)
RTTS = (3.0, 42.5)


async def scripted_session(urls: Sequence[str]) -> dict[str, Any]:
    """Run the script against ``urls`` (one per client: u1, u2, u3); the expected numbers."""
    sent: list[str] = []
    keepalives: dict[str, int] = {}  # counted for all rooms, not in the room's messages_in
    payloads: list[bytes] = []
    clients: list[WsClient] = []

    async def send(client: WsClient, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else orjson.dumps(frame).decode()
        if isinstance(frame, dict) and frame["type"] in ("ping", "heartbeat"):
            keepalives[frame["type"]] = keepalives.get(frame["type"], 0) + 1
        else:
            sent.append(text)
        await client.send_raw(text)

    c1 = await WsClient.open(urls[0], name="meter-u1")
    clients.append(c1)
    c2 = await WsClient.open(urls[1], name="meter-u2")
    clients.append(c2)
    await c1.recv_until(lambda f: f.get("type") == "user_joined" and f.get("userId") == "u2")
    c3 = await WsClient.open(urls[2], name="meter-u3")
    clients.append(c3)
    for c in (c1, c2):
        await c.recv_until(lambda f: f.get("type") == "user_joined" and f.get("userId") == "u3")

    for i in range(5):  # durable, acknowledged, delivered to 2
        payload = {"x": i, "y": i * 2, "color": "#ff00" + str(i) * 2}
        payloads.append(orjson.dumps(payload))
        await send(c1, {"type": "draw", "id": f"d{i}", "payload": payload})
        await c1.recv_until(ack_for(f"d{i}"))
    for c in (c2, c3):
        await c.wait_for(of_type("draw"), count=5)
    for i in range(3):  # ephemeral, delivered to 2
        await send(c2, {"type": "cursor", "payload": {"x": i, "y": -i}})
    for c in (c1, c3):
        await c.wait_for(of_type("cursor"), count=3)
    for rtt in RTTS:  # answered to the sender only; the rtt is metered
        await send(c3, {"type": "ping", "payload": {"t": 1, "rtt": rtt}})
    await c3.wait_for(of_type("pong"), count=2)
    await send(c2, {"type": "heartbeat"})
    await send(c1, "not json")  # counted in, answered with an error
    await c1.recv_until(lambda f: f.get("type") == "error" and f.get("reason") == "invalid_json")

    await c3.close()
    for c in (c1, c2):
        await c.recv_until(lambda f: f.get("type") == "user_left" and f.get("userId") == "u3")
    await c2.close()
    await c1.recv_until(lambda f: f.get("type") == "user_left" and f.get("userId") == "u2")
    await c1.close()

    received = [f for c in clients for f in c.frames if f.get("type") in BROADCAST_TYPES]
    return {
        "connections_opened": 3,
        "connections_closed": 3,
        "peak_connections": 3,
        "messages_in": len(sent),
        "bytes_in": sum(len(t.encode()) for t in sent),
        # user_joined 1 + 2, draws 5 x 2, cursors 3 x 2, user_left 2 + 1
        "messages_out": 22,
        "bytes_out": sum(len(orjson.dumps(f)) for f in received),
        "events_written": 5,
        "rows_read": 0,  # a new room: nothing to load
        "rows_written": 5,
        "storage_bytes_written": sum(len(p) for p in payloads),
        "alarms_fired": 0,
        "_deliveries_seen": len(received),
        "_processing_count": 8,  # 5 draws + 3 cursors
        "_round_trip": {bucket_of(r): 1 for r in RTTS},
        "_keepalives": keepalives,
    }


USAGE_SQL = (
    "SELECT {cols}, SUM(u.actor_awake_ms), COUNT(*) FROM billing_usageminute u "
    "JOIN rooms_room r ON r.id = u.room_id WHERE r.slug = {ph}"
)


def usage_sql(placeholder: str) -> str:
    cols = ", ".join("MAX(u.peak_connections)" if c == "peak_connections" else f"SUM(u.{c})" for c in COUNTERS)
    return USAGE_SQL.format(cols=cols, ph=placeholder)


def latency_sql(placeholder: str) -> str:
    return (
        "SELECT l.metric, l.bucket, SUM(l.count) FROM billing_latencybucket l JOIN rooms_room r ON r.id = l.room_id "
        f"WHERE r.slug = {placeholder} GROUP BY l.metric, l.bucket"
    )


async def wait_for_rows(read: Callable[[], dict[str, Any]], expected: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """Poll the flushed rows until they match (or the timeout); the last read."""
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if all(got.get(k) == v for k, v in expected.items() if not k.startswith("_")) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.25)
