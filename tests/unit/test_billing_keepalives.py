"""Keepalive frames (``ping``, ``heartbeat``: what the shipped clients send
every 15 s while nothing happens) are the socket's traffic, not the room's:
counted for all rooms, never in a room's ``messages_in``, so a room whose
clients only keep their sockets alive has silent minutes (no usage row)."""

from __future__ import annotations

from typing import Any

import pytest

from billing.meter import KEEPALIVE_OP, meter

pytestmark = pytest.mark.django_db(transaction=True)


def drain(room: str) -> tuple[int, int, dict[tuple[str, str], int]]:
    """Everything the meter counted since the last drain: the room's
    messages and bytes in, and the all-rooms op counts."""
    taken, ops = meter.take()
    messages = sum(c.messages_in for r, c in taken if r == room)
    nbytes = sum(c.bytes_in for r, c in taken if r == room)
    totals: dict[tuple[str, str], int] = {}
    for _, counts in ops:
        for key, n in counts.items():
            totals[key] = totals.get(key, 0) + n
    return messages, nbytes, totals


async def test_keepalives_are_counted_for_all_rooms_and_not_as_the_rooms_messages(connect: Any) -> None:
    a = await connect("kept", userId="a")
    b = await connect("kept", userId="b")
    await a.recv_type("user_joined")
    drain("kept")
    for client in (a, b):
        await client.send("heartbeat")
        await client.send("ping", {"t": 1})
        assert (await client.recv_type("pong"))["payload"] == {"t": 1}
    messages, nbytes, ops = drain("kept")
    assert (messages, nbytes) == (0, 0)
    assert (ops.get((KEEPALIVE_OP, "ping")), ops.get((KEEPALIVE_OP, "heartbeat"))) == (2, 2)
    # Anything else is the room's, invalid frames included.
    await a.send("cursor", {"x": 1, "y": 2})
    await b.recv_type("cursor")
    await a.send_raw("{")
    await a.recv_type("error")
    messages, nbytes, ops = drain("kept")
    assert (messages, nbytes) == (2, len('{"type":"cursor","payload":{"x":1,"y":2}}') + 1)
    assert (KEEPALIVE_OP, "ping") not in ops and ops.get(("error", "invalid_json")) == 1
