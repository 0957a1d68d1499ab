"""The presence ledger: one row per connection session, and the processes
that hold them.

A session is written when a socket is admitted to a room and closed when it
disconnects (close code and reason: ours when the server closed it, the
client's otherwise). Rows are written in batches (``ledger.py``), never one
synchronous write per join on the hot path. A session whose process died is
closed by the sweep (``sweep.py``) with ``left_at`` = the process's last beat
and a reason that says so.

No secrets: the client address is kept only as a keyed hash (enough to tell
"same address" apart in an incident review, not to recover it), and the
user agent is truncated.
"""

from __future__ import annotations

from django.db import models

# 1006: "abnormal closure" (RFC 6455): no close frame was ever seen.
PROCESS_GONE_CODE = 1006
PROCESS_GONE_REASON = "server process gone; left at its last beat"
SHUTDOWN_REASON = "server shut down"


class PresenceProcess(models.Model):
    """A server process that holds sockets; it beats while alive."""

    process = models.CharField(max_length=80, unique=True)
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)
    # Set when it stopped cleanly, or when the sweep found it dead.
    stopped_at = models.DateTimeField(null=True, blank=True)
    dead = models.BooleanField(default=False)

    class Meta:
        ordering = ["-beat_at"]

    def __str__(self) -> str:
        return self.process


class PresenceSession(models.Model):
    room = models.CharField(max_length=64)
    user_id = models.CharField(max_length=128)
    connection_id = models.CharField(max_length=32, unique=True)
    process = models.CharField(max_length=80)
    joined_at = models.DateTimeField()
    left_at = models.DateTimeField(null=True, blank=True)
    close_code = models.PositiveIntegerField(null=True, blank=True)
    close_reason = models.CharField(max_length=200, blank=True, default="")
    user_agent = models.CharField(max_length=256, blank=True, default="")
    address_hash = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        ordering = ["-joined_at"]
        indexes = [
            # "who was in the room at T": joined before T, left after it.
            models.Index(fields=["room", "joined_at"], name="presence_room_joined"),
            models.Index(fields=["user_id", "joined_at"], name="presence_user_joined"),
            # The sweep: open sessions of a process; retention: old closed ones.
            models.Index(fields=["process", "left_at"], name="presence_process_open"),
            models.Index(fields=["left_at"], name="presence_left"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.room} ({self.connection_id})"
