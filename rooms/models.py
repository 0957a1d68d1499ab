"""The room, its durable event log, its snapshots and its key-value storage.

The log is append-only: ``(room, seq)`` is unique, which is the last fence
against two writers (a stale owner's commit fails instead of forking the log).
Payloads are stored as the exact JSON text that was broadcast, so history and
resume replay send byte-identical frames without re-encoding.
"""

from __future__ import annotations

from django.conf import settings as django_settings
from django.core.validators import RegexValidator
from django.db import models

ROOM_SLUG_PATTERN = r"[A-Za-z0-9_-]{1,64}"

slug_validator = RegexValidator(
    rf"^{ROOM_SLUG_PATTERN}\Z", "Room ids are 1-64 characters of A-Z, a-z, 0-9, _ and -."
)


class Room(models.Model):
    slug = models.CharField(max_length=64, unique=True, validators=[slug_validator])
    kind = models.CharField(max_length=32, default="whiteboard")
    private = models.BooleanField(default=False)
    # None: no limit beyond the process's own.
    max_connections = models.PositiveIntegerField(null=True, blank=True)
    settings = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The account (an app backend's API user) that created the room through
    # the REST API; it sees and publishes to its rooms. None: created by a
    # WebSocket connect (auto-creation) or by staff; only staff manage those.
    owner = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="rooms"
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Event(models.Model):
    """One durable event of a room's log."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    type = models.CharField(max_length=32)
    user_id = models.CharField(max_length=128)
    # The client's message id, for idempotent retries ("" when none was given).
    client_id = models.CharField(max_length=64, blank=True, default="")
    # Exact JSON text of the payload ("" when the message had none).
    payload = models.TextField(blank=True, default="")
    # Server time in milliseconds when the event was ordered.
    ts = models.BigIntegerField()

    class Meta:
        ordering = ["room", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="rooms_event_room_seq_unique"),
        ]
        indexes = [
            # Rebuilding the de-duplication window after a wake-up reads the
            # last minutes of a room's log by time.
            models.Index(fields=["room", "ts"], name="rooms_event_room_ts"),
            # History filtered by type or by user pages by seq inside the
            # filter, so a page costs one index range scan at any seq (the
            # unfiltered history uses the (room, seq) unique index).
            models.Index(fields=["room", "type", "seq"], name="rooms_event_room_type_seq"),
            models.Index(fields=["room", "user_id", "seq"], name="rooms_event_room_user_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.room_id}#{self.seq} {self.type}"


class Snapshot(models.Model):
    """The kind's full state right after event ``seq`` (state JSON text)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="snapshots")
    seq = models.BigIntegerField()
    state = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["room", "-seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="rooms_snapshot_room_seq_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.room_id}@{self.seq}"


class StoredValue(models.Model):
    """A room's own key-value storage (the actor's ``storage`` API)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="stored_values")
    key = models.CharField(max_length=256)
    value = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["room", "key"]
        constraints = [
            models.UniqueConstraint(fields=["room", "key"], name="rooms_storedvalue_room_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.room_id}:{self.key}"


class ActorRun(models.Model):
    """One stretch of time a room's actor was awake in some process.

    Billing meters the sum of ``awake_ms`` as the room's duration; a run whose
    process died keeps ``slept_at`` empty.
    """

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="actor_runs")
    process = models.CharField(max_length=128)
    woke_at = models.DateTimeField()
    slept_at = models.DateTimeField(null=True, blank=True)
    awake_ms = models.BigIntegerField(default=0)
    # Why it went to sleep: "idle" (hibernation), "shutdown", "error".
    sleep_reason = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        ordering = ["-woke_at"]
        indexes = [models.Index(fields=["room", "woke_at"], name="rooms_actorrun_room_woke")]

    def __str__(self) -> str:
        return f"{self.room_id} {self.woke_at:%Y-%m-%d %H:%M:%S}"


class Alarm(models.Model):
    """A durable per-room alarm (Durable Objects' ``setAlarm``, plus names).

    A room has at most one alarm per ``name`` ("" is the default alarm). The
    dispatcher claims a due alarm (``claimed_until``) and delivers it to the
    room's actor, which runs the kind's ``on_alarm`` and then deletes the row,
    or records the failure and the next attempt. ``token`` changes whenever
    the alarm is set again, so a delivery of an older setting is recognised
    and dropped (at least once, never a stale one).
    """

    SCHEDULED = "scheduled"
    FAILED = "failed"
    STATUSES = [(SCHEDULED, "scheduled"), (FAILED, "failed")]

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="alarms")
    name = models.CharField(max_length=64, blank=True, default="")
    # When the kind asked for it.
    due_at = models.DateTimeField()
    # When it is delivered next: due_at, then due_at + backoff after failures.
    next_attempt_at = models.DateTimeField()
    # A delivery in flight: nobody else delivers it before this time.
    claimed_until = models.DateTimeField(null=True, blank=True)
    token = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=STATUSES, default=SCHEDULED)
    # Failed deliveries so far (the handler raised).
    attempts = models.PositiveIntegerField(default=0)
    # Exception type and message of the last failure (shown in the admin; never logged).
    last_error = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["next_attempt_at"]
        constraints = [
            models.UniqueConstraint(fields=["room", "name"], name="rooms_alarm_room_name_unique"),
        ]
        indexes = [
            # The dispatcher's only query: due scheduled alarms.
            models.Index(fields=["status", "next_attempt_at"], name="rooms_alarm_due"),
        ]

    def __str__(self) -> str:
        return f"{self.room_id}:{self.name or '(default)'} at {self.due_at:%Y-%m-%d %H:%M:%S}"
