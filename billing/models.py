"""Per-room per-minute usage, connection levels, latency histograms, close
and error counts, prices and budgets.

Counter rows are shaped like zulip's analytics counts: one row per scope and
minute, only ever added to (by upsert, so N processes flushing the same room
and minute add up). Nothing here is written on the hot path: the meter
(``billing/meter.py``) counts in memory and ``billing/flush.py`` writes.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from rooms.models import Room


class UsageMinute(models.Model):
    """What one room used during one minute, summed over every process."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="usage_minutes")
    # Start of the minute, UTC.
    minute = models.DateTimeField()
    connections_opened = models.BigIntegerField(default=0)
    connections_closed = models.BigIntegerField(default=0)
    # Most connections in the room at once during the minute (counted by the
    # room's owner, which sees every join and leave).
    peak_connections = models.IntegerField(default=0)
    # Every frame a client sent (pings and invalid frames included: a hosted
    # service bills them too) and their UTF-8 bytes.
    messages_in = models.BigIntegerField(default=0)
    bytes_in = models.BigIntegerField(default=0)
    # Fan-out deliveries: one per event per receiving socket, and their bytes.
    messages_out = models.BigIntegerField(default=0)
    bytes_out = models.BigIntegerField(default=0)
    events_written = models.BigIntegerField(default=0)
    rows_read = models.BigIntegerField(default=0)
    rows_written = models.BigIntegerField(default=0)
    # Bytes of event payloads and storage values written.
    storage_bytes_written = models.BigIntegerField(default=0)
    actor_awake_ms = models.BigIntegerField(default=0)
    alarms_fired = models.BigIntegerField(default=0)
    # Process CPU apportioned to the room by its share of the process's work.
    cpu_us = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "minute"], name="billing_usage_room_minute")]
        indexes = [models.Index(fields=["minute"], name="billing_usage_minute")]

    def __str__(self) -> str:
        return f"{self.room_id} {self.minute:%Y-%m-%d %H:%M}"


class ConnectionSpan(models.Model):
    """Minutes during which a room had the same number of open connections.

    A room's peak in a minute is the larger of its ``UsageMinute`` row's peak
    (minutes with traffic, joins or leaves) and the level of the span covering
    the minute: a room whose sockets stay open and silent is billed for them
    without a row per minute (10,000 hibernated rooms would otherwise be
    10,000 rows written every minute by an idle server; docs/performance.md).
    ``billing/levels.py`` reads both.

    Written by the room's owner when the number of connections at the end of
    a flushed minute differs from the level it last wrote; ``until`` stays NULL
    while the level holds. A clean stop closes its process's spans; the
    presence sweep closes those of a process that stopped beating, at its
    last beat.
    """

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="connection_spans")
    # The process that counted the connections (presence.process.PROCESS_ID).
    process = models.CharField(max_length=128)
    # First minute (its start, UTC) at this level, and the first minute after
    # it (NULL: the level holds).
    since = models.DateTimeField()
    until = models.DateTimeField(null=True, blank=True)
    connections = models.IntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "process", "since"], name="billing_span_room_process_since")
        ]
        indexes = [
            models.Index(fields=["since"], name="billing_span_since"),
            models.Index(fields=["process", "until"], name="billing_span_process_until"),
        ]

    def __str__(self) -> str:
        until = "now" if self.until is None else f"{self.until:%Y-%m-%d %H:%M}"
        return f"{self.room_id}: {self.connections} from {self.since:%Y-%m-%d %H:%M} to {until}"


COUNTER_FIELDS = (
    "connections_opened",
    "connections_closed",
    "messages_in",
    "bytes_in",
    "messages_out",
    "bytes_out",
    "events_written",
    "rows_read",
    "rows_written",
    "storage_bytes_written",
    "actor_awake_ms",
    "alarms_fired",
    "cpu_us",
)


class Metric(models.IntegerChoices):
    # Frame received to fan-out written, in the room's owner.
    PROCESSING = 1, "server processing"
    # Round trip reported by clients in `ping` (payload.rtt, ms).
    ROUND_TRIP = 2, "client round trip"
    # The same, from sessions older than ALERT_MIN_SESSION_SECONDS (the alert).
    ROUND_TRIP_LONG = 3, "client round trip, long sessions"


class LatencyBucket(models.Model):
    """One non-empty bucket of a room's latency histogram for one minute."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="latency_buckets")
    minute = models.DateTimeField()
    metric = models.PositiveSmallIntegerField(choices=Metric.choices)
    bucket = models.PositiveSmallIntegerField()
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "minute", "metric", "bucket"], name="billing_latency_unique")
        ]
        indexes = [models.Index(fields=["minute", "metric"], name="billing_latency_minute")]


class OpsCount(models.Model):
    """Close codes, error reasons and keepalives per minute, all rooms (bounded labels)."""

    minute = models.DateTimeField()
    # "close" (code as text), "error" (reason) or "alive" (a keepalive's type).
    what = models.CharField(max_length=8)
    code = models.CharField(max_length=32)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["minute", "what", "code"], name="billing_ops_unique")]


class Price(models.Model):
    """One list price of the cost model, editable in the admin."""

    key = models.CharField(max_length=64, unique=True)
    amount = models.DecimalField(max_digits=20, decimal_places=10)
    unit = models.CharField(max_length=128)
    source = models.CharField(max_length=256, blank=True, default="")
    as_of = models.DateField(null=True, blank=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return f"{self.key} = {self.amount} {self.unit}"


class RoomOwner(models.Model):
    """Who pays for a room (budgets per owner add up their rooms)."""

    room = models.OneToOneField(Room, on_delete=models.CASCADE, related_name="billing_owner")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="owned_rooms")

    def __str__(self) -> str:
        return f"{self.room} -> {self.owner}"


class Budget(models.Model):
    """A monthly cost ceiling for one room or for all rooms of one owner."""

    class Basis(models.TextChoices):
        HERE = "here", "cost here (CPU + storage)"
        DURABLE_OBJECTS = "durable_objects", "Durable Objects list price"
        HOSTED = "hosted", "hosted per-connection service"

    room = models.OneToOneField(Room, on_delete=models.CASCADE, null=True, blank=True, related_name="budget")
    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="room_budget"
    )
    monthly_limit = models.DecimalField(max_digits=14, decimal_places=4, help_text="USD per calendar month (UTC)")
    basis = models.CharField(max_length=16, choices=Basis.choices, default=Basis.HERE)
    # Share of the limit at which the room gets a `budget_warning` event.
    warn_fraction = models.DecimalField(max_digits=4, decimal_places=3, default=0.8)
    # Set by the enforcer (per period "YYYY-MM"), shown in the admin.
    spent = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    warned_period = models.CharField(max_length=7, blank=True, default="")
    exceeded_period = models.CharField(max_length=7, blank=True, default="")
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(room__isnull=False, owner__isnull=True) | models.Q(room__isnull=True, owner__isnull=False)),
                name="billing_budget_room_xor_owner",
            )
        ]

    def __str__(self) -> str:
        return f"budget {self.room or self.owner}: {self.monthly_limit} USD/month ({self.basis})"
