"""The cost model reproduces docs/billing.md's worked example from the default
list prices (the data migration), and usage is read back from the rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing import costs
from billing.models import Price, UsageMinute
from rooms.models import Event, Room

pytestmark = pytest.mark.django_db

# docs/billing.md, "Worked example": one room, one 30-day month.
EXAMPLE = costs.Usage(
    connections_opened=1_000,
    peak_connections=50,
    messages_in=2_000_000,
    messages_out=98_000_000,
    alarms_fired=2_000,
    rows_read=50_000,
    rows_written=1_000_000,
    actor_awake_ms=720_000_000,
    cpu_us=3_600_000_000,
)
EXAMPLE_STORAGE_BYTES = 1_000_000_000
THIRTY_DAYS = 30 * 24 * 3600


def test_worked_example_from_the_default_prices() -> None:
    result = costs.compute(EXAMPLE, EXAMPLE_STORAGE_BYTES, THIRTY_DAYS, costs.load_prices())
    do = result.durable_objects.items
    assert do["requests"] == Decimal("0.01545")  # (1,000 + 2,000 + 2,000,000 / 20) x 0.15 / 1M
    assert do["duration"] == Decimal("1.152")  # 720,000 s x 0.128 GB x 12.50 / 1M
    assert do["rows_read"] == Decimal("0.00005")
    assert do["rows_written"] == Decimal("1")
    assert do["storage"] == Decimal("0.2")
    assert result.durable_objects.total == Decimal("2.3675")
    assert result.hosted.total == Decimal("4.9")  # 50 peak x 0.098
    assert result.here.items == {"cpu": Decimal("0.0504"), "storage": Decimal("0.115")}
    assert result.here.total == Decimal("0.1654")


def test_prices_are_rows_and_edits_change_the_result() -> None:
    Price.objects.filter(key="here.cpu_per_vcpu_hour").update(amount=Decimal("0.10"))
    result = costs.compute(EXAMPLE, 0, THIRTY_DAYS, costs.load_prices())
    assert result.here.total == Decimal("0.1")
    assert Price.objects.get(key="do.ws_messages_per_request").as_of is not None


def test_usage_and_storage_are_read_from_the_rows() -> None:
    room = Room.objects.create(slug="cost-room")
    other = Room.objects.create(slug="other-room")
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    UsageMinute.objects.create(room=room, minute=t0, messages_in=10, peak_connections=3, cpu_us=5)
    UsageMinute.objects.create(room=room, minute=t0 + timedelta(minutes=1), messages_in=5, peak_connections=4)
    UsageMinute.objects.create(room=other, minute=t0, messages_in=100, peak_connections=2)
    UsageMinute.objects.create(room=room, minute=t0 + timedelta(days=40), messages_in=999)  # outside
    Event.objects.create(room=room, seq=1, type="draw", user_id="u", payload='{"x":1}', ts=0)
    end = t0 + timedelta(days=1)
    one = costs.usage_between(t0, end, [room.pk])
    assert (one.messages_in, one.peak_connections, one.cpu_us) == (15, 4, 5)
    both = costs.usage_between(t0, end)
    # Peak of several rooms: the largest minute's sum (3 + 2 at t0).
    assert (both.messages_in, both.peak_connections) == (115, 5)
    assert costs.storage_bytes([room.pk]) == len('{"x":1}')
    assert costs.month_start(t0) == datetime(2026, 3, 1, tzinfo=UTC)
    assert costs.next_month(costs.month_start(t0)) == datetime(2026, 4, 1, tzinfo=UTC)


def test_a_deleted_price_falls_back_to_the_list_price() -> None:
    Price.objects.filter(key="do.memory_gb").delete()
    assert costs.load_prices()["do.memory_gb"] == Decimal("0.128")


def test_usage_report_for_the_rest_api() -> None:
    from billing.histogram import bucket_of
    from billing.models import LatencyBucket, Metric
    from billing.reports import usage_report

    room = Room.objects.create(slug="report")
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    UsageMinute.objects.create(room=room, minute=t0, messages_in=3, bytes_in=30, peak_connections=2)
    LatencyBucket.objects.create(room=room, minute=t0, metric=Metric.PROCESSING, bucket=bucket_of(2.0), count=4)
    report = usage_report(room.pk, t0, t0 + timedelta(hours=1))
    assert report["minutes"][0]["minute"] == int(t0.timestamp() * 1000)
    assert report["minutes"][0]["messages_in"] == 3 and report["totals"]["bytes_in"] == 30
    assert report["latencyMs"]["processing"]["count"] == 4
    assert report["latencyMs"]["roundTrip"]["p50"] is None
    assert set(report["costUsd"]) == {"here", "durable_objects", "hosted"}
