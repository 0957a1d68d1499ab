"""The delivery task on its own: backoff schedule, giving up, the log row."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

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
