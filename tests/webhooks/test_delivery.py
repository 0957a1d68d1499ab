"""The delivery task on its own: backoff schedule, giving up, the log row."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from rooms.models import Room
from tests.fixtures.receiver import Receiver
from webhooks import dispatch, tasks
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db


def test_backoff_doubles_from_the_base() -> None:
    with override_settings(DORM={**settings.DORM, "WEBHOOK_BACKOFF_SECONDS": 2.0}):
        assert [tasks.backoff_seconds(n) for n in range(4)] == [2.0, 4.0, 8.0, 16.0]


def test_a_delivery_that_keeps_failing_is_marked_failed_after_the_last_retry(owner: Any, other: Any, receiver: Receiver) -> None:
    room = Room.objects.create(slug="r", owner=owner)
    Endpoint.objects.create(owner=owner, room=room, url=receiver.url + "/flaky", events=["user.joined"])
    # Only the owner's endpoints: another account's app-wide endpoint is not asked.
    Endpoint.objects.create(owner=other, url=receiver.url + "/ok", events=["user.joined"])
    with override_settings(DORM={**settings.DORM, "WEBHOOK_MAX_RETRIES": 0}):
        [delivery_id] = dispatch.enqueue("user.joined", "r", {"userId": "u"})
        # Eager: the task runs here, once (no retries allowed).
        tasks.deliver.apply(args=[delivery_id])
    delivery = Delivery.objects.get(pk=delivery_id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == ("failed", 1, 500, "HTTP 500")
    assert len(receiver.requests) == 1


def test_an_unreachable_endpoint_is_logged_not_raised(owner: Any) -> None:
    room = Room.objects.create(slug="r", owner=owner)
    Endpoint.objects.create(owner=owner, room=room, url="http://127.0.0.1:9/hook", events=["room.vacated"])
    with override_settings(DORM={**settings.DORM, "WEBHOOK_MAX_RETRIES": 0}):
        [delivery_id] = dispatch.enqueue("room.vacated", "r", {})
        tasks.deliver.apply(args=[delivery_id])
    delivery = Delivery.objects.get(pk=delivery_id)
    assert delivery.status == "failed" and delivery.last_status_code is None
    assert delivery.last_error in {"ConnectionRefusedError", "URLError"}


def test_stalled_deliveries_are_queued_again_on_the_broker(owner: Any, redis_url: str, settings: Any) -> None:
    import datetime

    import redis

    from config.celery import app

    room = Room.objects.create(slug="r", owner=owner)
    endpoint = Endpoint.objects.create(owner=owner, room=room, url="https://example.com/h", events=["user.joined"])
    old = timezone.now() - datetime.timedelta(seconds=tasks.STALLED_AFTER_SECONDS + 5)
    lost = Delivery.objects.create(endpoint=endpoint, event="user.joined", room_slug="r", body="{}")
    Delivery.objects.filter(pk=lost.pk).update(created_at=old)
    Delivery.objects.create(endpoint=endpoint, event="user.joined", room_slug="r", body="{}")  # recent: its task may be queued
    tried = Delivery.objects.create(endpoint=endpoint, event="user.joined", room_slug="r", body="{}", attempts=1)
    Delivery.objects.filter(pk=tried.pk).update(created_at=old)  # retrying: its task is on the broker
    app.conf.broker_url = redis_url
    try:
        assert tasks.requeue_stalled() == 1
    finally:
        app.conf.broker_url = settings.CELERY_BROKER_URL
        app.pool.force_close_all()
    queued = [json.loads(m) for m in redis.Redis.from_url(redis_url).lrange(app.conf.task_default_queue, 0, -1)]
    assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in queued] == [("webhooks.tasks.deliver", f"({lost.pk},)")]
