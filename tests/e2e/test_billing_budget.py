"""A budget crossing mid-session against a real daphne server: the room gets
a `budget_warning` event at 80 %, then durable writes are refused with
`over_budget` and new connections close with 4402; ephemeral traffic and the
open connections go on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.e2e.client import WsClient, of_type, room_name
from tests.e2e.conftest import STARTED
from tests.e2e.server import DormServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def budget_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DormServer]:
    env = {"DORM_BILLING_FLUSH_SECONDS": "0.3", "DORM_HIBERNATE_AFTER_SECONDS": "60"}
    server = start_server("daphne", tmp_path_factory.mktemp("budget"), extra_env=env, name="budget")
    STARTED.append(server)
    try:
        yield server
    finally:
        server.stop()


async def test_budget_warns_at_80_percent_then_refuses(budget_server: DormServer) -> None:
    s = budget_server
    room = room_name("budget")
    # Prices that make the cost a known function of the traffic: 1 USD per
    # Durable Objects request, everything else free. A connection is one
    # request, 20 incoming messages are one: 1 + n / 20 USD after n messages.
    s.execute("UPDATE billing_price SET amount = 0")
    s.execute("UPDATE billing_price SET amount = 1000000 WHERE key = 'do.requests_per_million'")
    s.execute("UPDATE billing_price SET amount = 20 WHERE key = 'do.ws_messages_per_request'")
    s.create_room(room, "whiteboard")
    s.execute(
        "INSERT INTO billing_budget (room_id, owner_id, monthly_limit, basis, warn_fraction, spent, warned_period, "
        "exceeded_period) VALUES (?, NULL, 10, 'durable_objects', 0.8, 0, '', '')",
        (s.room_id(room),),
    )
    watcher = await WsClient.open(s.url(room, userId="watcher"))  # 1 USD
    sender = await WsClient.open(s.url(room, userId="sender"))  # 2 USD
    sent = 0
    warned_after = None
    refused_after = None
    for i in range(400):
        if refused_after is None:
            await sender.send("draw", {"x": i, "y": 0}, id=f"m{i}")
            sent += 1
            reply = await sender.wait_reply(f"m{i}")
            if reply["type"] == "error":
                assert reply["reason"] == "over_budget", reply
                assert "budget" in reply["detail"]
                refused_after = sent
        if warned_after is None and watcher.matching(of_type("budget_warning")):
            warned_after = sent
        if refused_after is not None and warned_after is not None:
            break
        await asyncio.sleep(0.01)  # pace: the flush (every 0.3 s) keeps up within ~30 messages
    assert warned_after is not None and refused_after is not None
    # 80 % of 10 USD = 8 USD = 2 connections + 120 messages; 100 % at 160.
    assert warned_after >= 120
    assert refused_after > 160
    assert warned_after < refused_after
    warning = watcher.matching(of_type("budget_warning"))[0]
    assert warning["payload"]["level"] == "warning" and warning["payload"]["limitUsd"] == "10.00"
    # Durable writes refused, ephemeral ones still delivered.
    await sender.send("cursor", {"x": 1, "y": 1})
    await watcher.recv_until(of_type("cursor"))
    # A new connection is refused with 4402 (and the protocol's close frame first).
    late = await WsClient.open(s.url(room, userId="late"), expect_welcome=False)
    assert await late.wait_closed() == 4402
    assert late.frames[-1]["type"] == "close" and late.frames[-1]["code"] == 4402
    watcher.assert_open()
    sender.assert_open()
    # Staff raise the budget: the next refresh lets writes in again.
    s.execute("UPDATE billing_budget SET monthly_limit = 1000")
    for i in range(100):
        await sender.send("draw", {"x": i, "y": 1}, id=f"after{i}")
        reply = await sender.wait_reply(f"after{i}")
        if reply["type"] == "ack":
            break
        await asyncio.sleep(0.05)
    assert reply["type"] == "ack", reply
    rows = s.query("SELECT warned_period, exceeded_period FROM billing_budget")
    assert rows[0][0] and rows[0][1]
    await watcher.close()
    await sender.close()
    await late.close()
