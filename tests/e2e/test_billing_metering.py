"""Usage metering against a real daphne server: the per-minute rows match a
scripted session exactly (embedded mode; distributed mode in
test_metering_distributed.py)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from billing.models import Metric
from tests.e2e.billing_session import COUNTERS, latency_sql, scripted_session, usage_sql, wait_for_rows
from tests.e2e.client import WsClient, of_type, room_name
from tests.e2e.conftest import STARTED
from tests.e2e.server import DormServer, start_server

pytestmark = pytest.mark.e2e

BILLING_ENV = {
    # Flush often so the test need not wait a minute; hibernate late so the
    # room stays awake through the script (rows read stay 0).
    "DORM_BILLING_FLUSH_SECONDS": "0.5",
    "DORM_HIBERNATE_AFTER_SECONDS": "60",
    "DORM_METRICS_TOKEN": "e2e-metrics-token",
    "DORM_ALERT_MIN_SESSION_SECONDS": "1",
}


@pytest.fixture(scope="module")
def billing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DormServer]:
    server = start_server("daphne", tmp_path_factory.mktemp("billing"), extra_env=BILLING_ENV, name="billing")
    STARTED.append(server)
    try:
        yield server
    finally:
        server.stop()


def read_usage(server: DormServer, room: str) -> dict:
    row = server.query(usage_sql("?"), (room,))[0]
    got = dict(zip(COUNTERS, row[: len(COUNTERS)]))
    got["actor_awake_ms"], got["_rows"] = row[len(COUNTERS)], row[len(COUNTERS) + 1]
    return got


def keepalives(server: DormServer) -> dict[str, int]:
    return {c: int(n) for c, n in server.query("SELECT code, SUM(count) FROM billing_opscount WHERE what = 'alive' GROUP BY code")}


async def test_scripted_session_rows_match_exactly(billing_server: DormServer) -> None:
    room = room_name("meter")
    started = time.monotonic()
    alive_before = keepalives(billing_server)
    urls = [billing_server.url(room, userId=u) for u in ("u1", "u2", "u3")]
    expected = await scripted_session(urls)
    assert expected["_deliveries_seen"] == expected["messages_out"]
    got = await wait_for_rows(lambda: read_usage(billing_server, room), expected)
    assert {k: got[k] for k in COUNTERS} == {k: expected[k] for k in COUNTERS}
    # Pings and heartbeats are not the room's messages: counted for all rooms.
    assert expected["_keepalives"] == {"ping": 2, "heartbeat": 1}
    alive = keepalives(billing_server)
    assert {k: alive.get(k, 0) - alive_before.get(k, 0) for k in expected["_keepalives"]} == expected["_keepalives"]
    # One row per minute touched (the script may straddle a minute boundary).
    assert 1 <= got["_rows"] <= 2
    minutes = billing_server.query(
        "SELECT u.minute FROM billing_usageminute u JOIN rooms_room r ON r.id = u.room_id WHERE r.slug = ?", (room,)
    )
    assert all(m[0].endswith(":00") for m in minutes), minutes
    # Awake time grows while the actor is awake: bounded by the wall time.
    assert 0 < got["actor_awake_ms"] <= (time.monotonic() - started) * 1000 + 1000
    latency = {(m, b): n for m, b, n in billing_server.query(latency_sql("?"), (room,))}
    processing = sum(n for (m, _), n in latency.items() if m == Metric.PROCESSING)
    assert processing == expected["_processing_count"]
    round_trip = {b: n for (m, b), n in latency.items() if m == Metric.ROUND_TRIP}
    assert round_trip == expected["_round_trip"]


async def test_close_codes_and_errors_are_counted(billing_server: DormServer) -> None:
    def ops() -> dict[tuple[str, str], int]:
        return {(w, c): n for w, c, n in billing_server.query("SELECT what, code, SUM(count) FROM billing_opscount GROUP BY what, code")}

    before = ops()
    room = room_name("ops")
    c = await WsClient.open(billing_server.url(room, userId="u1"))
    await c.send_raw("{")
    await c.recv_until(lambda f: f.get("type") == "error")
    await c.close()
    bad = await WsClient.open(billing_server.raw_url("/ws/bad%20room?userId=u1"), expect_welcome=False)
    await bad.wait_closed()
    expected = {("error", "invalid_json"): 1, ("close", "1000"): 1, ("close", "4400"): 1}
    got: dict = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = ops()
        got = {k: after.get(k, 0) - before.get(k, 0) for k in expected}
        if got == expected:
            break
        time.sleep(0.25)
    assert got == expected


def scrape(server: DormServer, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def test_latency_alert_fires_on_long_sessions_and_shows_in_metrics(billing_server: DormServer) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from billing.histogram import bucket_of, upper_ms

    assert scrape(billing_server, None)[0] == 401
    assert scrape(billing_server, "wrong-token")[0] == 401
    room = room_name("alert")
    short = await WsClient.open(billing_server.url(room, userId="fresh"))
    for _ in range(10):  # a fresh session: not counted for the alert (else the median would be 5 s)
        await short.send("ping", {"rtt": 5000})
    await short.wait_for(of_type("pong"), count=10)
    long = await WsClient.open(billing_server.url(room, userId="old"))
    await asyncio.sleep(1.2)  # older than DORM_ALERT_MIN_SESSION_SECONDS
    for _ in range(9):
        await long.send("ping", {"rtt": 400})
    await long.wait_for(of_type("pong"), count=9)
    values: dict[str, float] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, text = scrape(billing_server, "e2e-metrics-token")
        assert status == 200
        values = {
            f.name: f.samples[0].value
            for f in text_string_to_metric_families(text)
            if f.name.startswith("dorm_latency_alert")
        }
        if values.get("dorm_latency_alert_firing") == 1:
            break
        await asyncio.sleep(0.25)
    assert values["dorm_latency_alert_firing"] == 1
    assert values["dorm_latency_alert_median_ms"] == upper_ms(bucket_of(400))
    assert values["dorm_latency_alert_threshold_ms"] == 250
    await short.close()
    await long.close()
