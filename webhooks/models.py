"""Webhook endpoints and the log of every delivery attempt's outcome."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

EVENT_TYPES = ["room.occupied", "room.vacated", "user.joined", "user.left", "event.durable"]


def https_only(url: str) -> None:
    # Plain HTTP only for local development (a receiver on localhost).
    if not url.startswith("https://") and not settings.DEBUG:
        raise ValidationError("webhook URLs must use https")


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class Endpoint(models.Model):
    """An HTTPS URL that receives a room's (or an app's rooms') events.

    ``room`` set: that room only. ``room`` empty: every room ``owner`` owns
    (an app backend registering once for all its rooms).
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints")
    room = models.ForeignKey("rooms.Room", null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000, validators=[https_only])
    # Shared with the receiver, which checks the HMAC-SHA256 signature.
    secret = models.CharField(max_length=128, default=new_secret)
    # Subscribed event types (a subset of EVENT_TYPES).
    events = models.JSONField(default=list)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.url


class Delivery(models.Model):
    """One event for one endpoint: attempts, last outcome, final status."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"  # gave up after the last retry

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    room_slug = models.CharField(max_length=64)
    # The exact JSON body sent (and signed): metadata only, never event payloads.
    body = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "created_at"], name="webhooks_delivery_status")]

    def __str__(self) -> str:
        return f"{self.event} -> {self.endpoint_id} ({self.status})"
