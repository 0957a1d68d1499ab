"""Admin, ops dashboard and /metrics: render for staff, refuse others;
/metrics parses with the Prometheus client's parser and has bounded labels."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from billing import histogram
from billing.models import Budget, LatencyBucket, Metric, OpsCount, UsageMinute
from billing.stats import last_minute
from rooms.models import Event, Room

pytestmark = pytest.mark.django_db


@pytest.fixture
def usage() -> Room:
    room = Room.objects.create(slug="busy")
    lm = last_minute(timezone.now())
    UsageMinute.objects.create(room=room, minute=lm, messages_in=120, messages_out=600, peak_connections=7, cpu_us=9000)
    UsageMinute.objects.create(room=room, minute=lm - timedelta(minutes=1), messages_in=60, peak_connections=5)
    for b, n in ((histogram.bucket_of(1.0), 90), (histogram.bucket_of(20.0), 10)):
        LatencyBucket.objects.create(room=room, minute=lm, metric=Metric.PROCESSING, bucket=b, count=n)
    LatencyBucket.objects.create(room=room, minute=lm, metric=Metric.ROUND_TRIP_LONG, bucket=histogram.bucket_of(400.0), count=3)
    OpsCount.objects.create(minute=lm, what="close", code="4402", count=2)
    OpsCount.objects.create(minute=lm, what="error", code="invalid_json", count=1)
    Event.objects.create(room=room, seq=1, type="draw", user_id="u1", payload='{"x":1}', ts=1)
    Budget.objects.create(room=room, monthly_limit=5)
    return room


@pytest.fixture
def staff(django_user_model) -> Client:  # type: ignore[no-untyped-def]
    user = django_user_model.objects.create_user("ops", password="pw", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def plain(django_user_model) -> Client:  # type: ignore[no-untyped-def]
    user = django_user_model.objects.create_user("someone", password="pw")
    client = Client()
    client.force_login(user)
    return client


def test_admin_rooms_list_and_room_page_for_staff(staff: Client, usage: Room) -> None:
    page = staff.get("/admin/rooms/room/")
    assert page.status_code == 200
    text = page.content.decode()
    for column in ("live connections", "messages/min", "p50 ms", "p99 ms", "cost this month"):
        assert column in text.lower()
    assert ">120<" in text  # messages in the last complete minute
    assert ">7<" in text  # peak connections of the last minute
    assert staff.get("/admin/rooms/room/?o=4").status_code == 200  # sorted by messages/min
    room_page = staff.get(f"/admin/rooms/room/{usage.pk}/change/")
    assert room_page.status_code == 200
    body = room_page.content.decode()
    for section in ("State", "Connected here", "Budget", "Last 24 hours", "Recent history", "room-series", "close the room"):
        assert section.lower() in body.lower()
    for table in ("usageminute", "price", "budget", "latencybucket"):
        assert staff.get(f"/admin/billing/{table}/").status_code == 200


def test_pages_refuse_non_staff(plain: Client, usage: Room) -> None:
    anonymous = Client()
    for client in (plain, anonymous):
        assert client.get("/admin/rooms/room/").status_code == 302
        assert client.get("/ops/").status_code == 302
        assert client.get("/ops/data").status_code == 302
        assert client.get("/metrics").status_code == 401
    assert plain.post(f"/admin/rooms/room/{usage.pk}/close-room/").status_code == 302


def test_ops_dashboard_for_staff(staff: Client, usage: Room) -> None:
    page = staff.get("/ops/")
    assert page.status_code == 200
    assert b"uPlot.iife.min.js" in page.content and b"cdn" not in page.content.lower()
    data = staff.get("/ops/data").json()
    assert data["active_rooms"] == 1
    assert data["connections"] == 7
    assert data["messages_per_second"] == 2.0
    assert data["latency_hour"]["p50"] == histogram.upper_ms(histogram.bucket_of(1.0))
    assert data["latency_hour"]["p99"] == histogram.upper_ms(histogram.bucket_of(20.0))
    assert data["ops"]["close"]["4402"] == 2
    assert data["alert"]["state"] == "firing"  # 400 ms median against 250 ms
    assert data["top_rooms_by_cost"][0]["room"] == "busy"
    assert data["top_rooms_by_latency"][0]["room"] == "busy"
    assert len(data["series"]) == 61  # the last hour and the current minute


@override_settings(BILLING={"METRICS_TOKEN": "s3cret-scraper-token"})
def test_metrics_parse_and_token(usage: Room, staff: Client) -> None:
    anonymous = Client()
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scraper-token")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    assert families["dorm_messages_in"].samples[0].value == 180
    hist = families["dorm_processing_latency_seconds"]
    count = [s for s in hist.samples if s.name.endswith("_count")][0].value
    assert count == 100
    closes = {s.labels["code"]: s.value for s in families["dorm_closes"].samples if s.name.endswith("_total")}
    assert closes == {"4402": 2}
    assert families["dorm_latency_alert_firing"].samples[0].value == 1
    providers = {s.labels["provider"] for s in families["dorm_cost_month_usd"].samples}
    assert providers == {"here", "durable_objects", "hosted"}
    # Bounded cardinality: no label carries a room id.
    for family in families.values():
        for sample in family.samples:
            assert "busy" not in sample.labels.values()
    assert staff.get("/metrics").status_code == 200
