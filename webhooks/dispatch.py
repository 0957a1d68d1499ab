"""Record the deliveries an event owes and queue them (runs off the event loop)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from django.db import transaction
from django.db.models import Q

from rooms.protocol import now_ms
from webhooks.models import Delivery, Endpoint

log = logging.getLogger("dorm.webhooks")


def endpoints_for(room: str) -> list[Endpoint]:
    """Active endpoints of the room itself, and app-wide ones of its owner."""
    return list(
        Endpoint.objects.filter(active=True).filter(
            Q(room__slug=room) | Q(room__isnull=True, owner__rooms__slug=room)
        )
    )


def enqueue(event: str, room: str, data: dict[str, Any]) -> list[int]:
    from webhooks.tasks import deliver

    ids = []
    for endpoint in endpoints_for(room):
        if event not in endpoint.events:
            continue
        body = orjson.dumps(
            {"id": uuid.uuid4().hex, "type": event, "room": room, "data": data, "createdAt": now_ms()}
        ).decode()
        with transaction.atomic():
            delivery = Delivery.objects.create(endpoint=endpoint, event=event, room_slug=room, body=body)
            # Queued only once the row exists for the worker to read.
            transaction.on_commit(lambda pk=delivery.pk: deliver.delay(pk))
        ids.append(delivery.pk)
        log.info("webhook queued room=%s event=%s endpoint=%d delivery=%d", room, event, endpoint.pk, delivery.pk)
    return ids
