"""The Celery task that POSTs one delivery, retried with exponential backoff."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
import urllib.error
import urllib.request

from celery import shared_task
from django.utils import timezone

from rooms.conf import dorm_settings
from webhooks import signing
from webhooks.models import Delivery

log = logging.getLogger("dorm.webhooks")


class DeliveryFailed(Exception):
    pass


def backoff_seconds(retries: int) -> float:
    """base, 2*base, 4*base, ...: a flapping receiver is not hammered."""
    return dorm_settings.WEBHOOK_BACKOFF_SECONDS * (2**retries)


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=dorm_settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@shared_task(bind=True, acks_late=True, max_retries=None)
def deliver(self, delivery_id: int) -> str:  # type: ignore[no-untyped-def]
    delivery = Delivery.objects.select_related("endpoint").get(pk=delivery_id)
    if delivery.status != Delivery.Status.PENDING:
        return delivery.status  # a redelivered task (acks_late) after success
    endpoint = delivery.endpoint
    body = delivery.body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Dorm-Webhooks/1",
        "Dorm-Event": delivery.event,
        "Dorm-Delivery": str(delivery.pk),
        signing.HEADER: signing.sign(endpoint.secret, body, int(time.time())),
    }
    delivery.attempts += 1
    try:
        code: int | None = post(endpoint.url, body, headers)
        error = "" if 200 <= code < 300 else f"HTTP {code}"  # type: ignore[operator]
    except OSError as exc:  # refused, reset, timeout, DNS
        code, error = None, type(exc).__name__
    delivery.last_status_code = code
    delivery.last_error = error[:200]
    if not error:
        delivery.status = Delivery.Status.SUCCEEDED
        delivery.delivered_at = timezone.now()
    elif delivery.attempts > dorm_settings.WEBHOOK_MAX_RETRIES:
        delivery.status = Delivery.Status.FAILED
    delivery.save(update_fields=["attempts", "last_status_code", "last_error", "status", "delivered_at"])
    log.info(
        "webhook attempt delivery=%d event=%s room=%s attempt=%d status=%s error=%s",
        delivery.pk, delivery.event, delivery.room_slug, delivery.attempts, code, error or "-",
    )
    if delivery.status == Delivery.Status.PENDING:
        raise self.retry(countdown=backoff_seconds(delivery.attempts - 1), exc=DeliveryFailed(error))
    return delivery.status


# A delivery still untried this long after it was recorded lost its task (the
# broker was down when it was queued): queue it again. Long enough that a
# backed-up queue is not mistaken for a lost task; a rare duplicate is
# possible, so receivers de-duplicate on the Dorm-Delivery header.
STALLED_AFTER_SECONDS = 600


@shared_task
def requeue_stalled() -> int:
    """Run by Celery beat (CELERY_BEAT_SCHEDULE): re-queue deliveries whose task was lost."""
    cutoff = timezone.now() - timedelta(seconds=STALLED_AFTER_SECONDS)
    stalled = list(
        Delivery.objects.filter(status=Delivery.Status.PENDING, attempts=0, created_at__lt=cutoff).values_list("pk", flat=True)[:1000]
    )
    for pk in stalled:
        deliver.delay(pk)
    if stalled:
        log.warning("webhook deliveries requeued count=%d", len(stalled))
    return len(stalled)
