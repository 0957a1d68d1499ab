"""One namespaced settings dict, ``settings.DORM``, with defaults (DRF's way).

Read as ``dorm_settings.HIBERNATE_AFTER_SECONDS``; values are resolved lazily
and the cache is dropped on ``setting_changed`` so tests can override them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Seconds a room's actor stays in memory without frames before it hibernates.
    "HIBERNATE_AFTER_SECONDS": 30.0,
    "AUTO_CREATE_ROOMS": True,
    "DEFAULT_KIND": "whiteboard",
    "ALLOW_ANONYMOUS": True,
    # Frames over the soft limit get `too_large`; over the hard limit the socket
    # is closed with 1009 (daphne/uvicorn enforce it too, see README).
    "SOFT_FRAME_LIMIT_BYTES": 64 * 1024,
    "HARD_FRAME_LIMIT_BYTES": 1024 * 1024,
    # How long a (userId, id) pair is remembered for idempotent retries.
    "DEDUP_WINDOW_SECONDS": 600.0,
    # Durable events between two stored snapshots (bounds the wake-up replay).
    "SNAPSHOT_EVERY_EVENTS": 1000,
    # Most durable events one group commit writes.
    "MAX_BATCH_EVENTS": 1000,
    # A `since` further behind than this gets a full snapshot instead of a
    # replay, so one resuming client cannot stall a room's actor.
    "RESUME_MAX_EVENTS": 10_000,
    # Recent broadcast frames kept in memory to serve resumes without a query.
    "RECENT_FRAMES_KEPT": 2048,
    # More invalid frames than this in the window closes the socket with 1008.
    "ABUSE_MAX_INVALID_FRAMES": 100,
    "ABUSE_WINDOW_SECONDS": 10.0,
    # Fan-out writes pre-built frames straight to the socket transports where
    # the server is known (daphne, uvicorn websockets); off -> ASGI send only.
    # An escape hatch, and the "before" of the fan-out benchmark.
    "DIRECT_SOCKET_WRITES": True,
    # Distributed mode: a room's lease lives this long unless renewed (every
    # third of it). Also how long a dead owner's rooms wait for a new one.
    "LEASE_TTL_SECONDS": 5.0,
    # Deadline of one database call of a room (group commit, load, reload,
    # snapshot): past it the call is aborted (rooms/runtime/db_watchdog.py)
    # and the room serves ephemeral traffic while storage is unavailable.
    "DB_TIMEOUT_SECONDS": 5.0,
    # PostgreSQL: rounds of events alone (one INSERT) are committed on the
    # event loop's own connection instead of Django's database thread
    # (rooms/runtime/loop_commit.py); off -> every round on the thread.
    "DB_COMMITS_ON_LOOP": True,
    # A server process freezes what survives each full garbage collection, so
    # the next walks only what is new, and every this many seconds collects
    # everything once to free any cycle among frozen objects (0 = Python's
    # own full collections; None = 600 under daphne, 0 under uvicorn, whose
    # WebSocket protocol leaves every closed socket in reference cycles;
    # rooms/runtime/gc_freeze.py).
    "GC_THAW_SECONDS": None,
    # -- security (docs/security.md) --------------------------------------
    # Room tokens. HS256 with TOKEN_SECRET (>= 32 bytes) by default; RS*/ES*
    # verify with TOKEN_PUBLIC_KEY and issue only if TOKEN_PRIVATE_KEY is set.
    # An empty secret disables tokens (refused with 4401, never trusted).
    "TOKEN_ALGORITHM": "HS256",
    "TOKEN_SECRET": "",
    "TOKEN_PUBLIC_KEY": "",
    "TOKEN_PRIVATE_KEY": "",
    "TOKEN_TTL_SECONDS": 15 * 60,
    # Clock skew tolerated between the token's issuer and this server.
    "TOKEN_LEEWAY_SECONDS": 10.0,
    # Who may get which token: a function (user, slug, room or None, scope,
    # user_id) -> bool, by dotted path. Apps plug in their own membership.
    "TOKEN_POLICY": "rooms.token_api.default_policy",
    # New WebSocket connections per client address (token bucket; 4429).
    # Generous: many users share one address behind NAT or a corporate proxy.
    "CONNECT_RATE_PER_SECOND": 10.0,
    "CONNECT_BURST": 60,
    # Messages per user per room (token bucket; soft `rate_limited`).
    "MESSAGE_RATE_PER_SECOND": 20.0,
    "MESSAGE_BURST": 40,
    # Connections per room when the room's own max_connections is unset
    # (None: no limit).
    "MAX_CONNECTIONS_PER_ROOM": None,
    # Seconds a process keeps a room's access (private, max_connections,
    # anonymous viewers, kind) for new connections (rooms/access.py). A save
    # through this process drops it at once; a change made elsewhere (another
    # process, raw SQL) is seen within this bound. 0: query every connection.
    "ROOM_ACCESS_CACHE_SECONDS": 5.0,
    # Where the limit counters live: "" keeps them in process memory
    # (embedded mode); a redis:// URL shares them across processes.
    "LIMITS_REDIS_URL": "",
    "LIMITS_KEY_PREFIX": "dorm:limits:",
    # Webhooks (webhooks/): on when a Celery broker is configured.
    "WEBHOOKS": False,
    # Retry n waits BACKOFF * 2**n seconds; after MAX_RETRIES retries the
    # delivery is marked failed (2 s base: the last retry comes ~2 min later).
    "WEBHOOK_BACKOFF_SECONDS": 2.0,
    "WEBHOOK_MAX_RETRIES": 6,
    "WEBHOOK_TIMEOUT_SECONDS": 10.0,
    # One event.durable webhook per room per window, covering its seq range.
    "WEBHOOK_DURABLE_THROTTLE_SECONDS": 1.0,
    # Backpressure (backpressure.py): bytes queued for one socket past which
    # ephemeral events are skipped for it, and past which it is closed with
    # 4408; events held for a socket that has not had its welcome yet.
    "OUTBOUND_SOFT_BYTES": 256 * 1024,
    "OUTBOUND_MAX_BYTES": 4 * 1024 * 1024,
    "PENDING_MAX_FRAMES": 10_000,
    "BACKPRESSURE_INTERVAL_SECONDS": 0.1,
    # -- presence (presence/, docs/presence.md) ----------------------------
    # A connection not heard from (heartbeat or any frame) for this long is
    # offline: left out of presence lists, and others are told.
    "PRESENCE_TTL_SECONDS": 60.0,
    # How often each process sweeps its silent sockets, beats (says it is
    # alive) and closes the ledger sessions of dead processes.
    "PRESENCE_SWEEP_SECONDS": 5.0,
    # A process whose beat is older than this many sweep intervals is dead:
    # its sessions are closed and its live entries dropped.
    "PRESENCE_PROCESS_DEAD_AFTER_BEATS": 3,
    # At most one presence update per room per this window (coalesced churn).
    "PRESENCE_COALESCE_MS": 100,
    # ... and per room at most this many sockets a second reached by presence
    # updates: a big room's window widens to connections / this (0 = off).
    "PRESENCE_FANOUT_PER_SECOND": 2000,
    # ... and the process's rooms churning at once together at most this
    # many: they all get the same window, their connections / this (0 = off).
    "PRESENCE_PROCESS_FANOUT_PER_SECOND": 10000,
    # Ledger rows are written in batches at most this often.
    "PRESENCE_LEDGER_FLUSH_SECONDS": 0.25,
    # Closed ledger sessions older than this are deleted by the sweep.
    "PRESENCE_LEDGER_RETENTION_DAYS": 30,
    # "" -> presence in process memory (embedded); a redis:// URL -> shared.
    "PRESENCE_REDIS_URL": "",
    "PRESENCE_KEY_PREFIX": "dorm:presence:",
    # Who runs the alarm dispatcher: "embedded" (a task in the ASGI process),
    # "celery" (beat + worker; the distributed mode), "off". "auto": celery
    # when REDIS_URL is set, else embedded.
    "ALARM_SCHEDULER": "auto",
    # The embedded scheduler's poll period (it also looks 1.5 polls ahead).
    "ALARM_POLL_SECONDS": 0.25,
    # With no alarm due within this long, the embedded scheduler sleeps
    # until shortly before the next one (at most this long) instead of
    # polling: an idle process costs no database query four times a second.
    # Alarms set by this process's rooms wake it at once; this bounds how
    # late it sees one written by another process (None: always poll).
    "ALARM_IDLE_POLL_SECONDS": 30.0,
    # A claimed alarm is not delivered again before this many seconds after
    # its due time: how long a delivery lost with its process takes to retry.
    "ALARM_CLAIM_SECONDS": 10.0,
    # Attempts of a failing alarm handler before it is marked failed, and the
    # backoff between them: base, 2 x base, 4 x base, ... (capped).
    "ALARM_MAX_ATTEMPTS": 6,
    "ALARM_RETRY_BASE_SECONDS": 1.0,
    "ALARM_RETRY_MAX_SECONDS": 300.0,
    # History retention per kind ("*": every kind without its own entry):
    # {"keep_events": N, "keep_days": D}; None or {} keeps everything. A room's
    # settings may override with a "retention" dict of the same shape.
    "RETENTION": {},
    # Kinds available to rooms: name -> dotted path of the RoomKind class.
    "KINDS": {
        "whiteboard": "rooms.kinds.whiteboard.Whiteboard",
        "chat": "rooms.kinds.chat.Chat",
        "poll": "rooms.kinds.poll.Poll",
        "qa": "rooms.kinds.qa.QA",
        "seats": "rooms.kinds.seats.Seats",
        "yjs": "rooms.kinds.yjs.YjsDocument",
        "game": "rooms.kinds.game.GameTick",
    },
}


class AppSettings:
    """``x.NAME``: the project's ``settings.<SETTING>[NAME]`` or the default
    (``dorm_settings`` for ``DORM``, ``billing_settings`` for ``BILLING``).

    Read on the hot paths (every frame, every connection): a value read once
    is kept as an instance attribute, so later reads are plain attribute
    lookups that never reach ``__getattr__`` (424 -> 24 ns); a change of the
    Django setting (``setting_changed``, e.g. ``override_settings``) drops
    them all."""

    __slots__ = ("_setting", "_defaults", "_label", "__dict__")

    def __init__(self, setting: str, defaults: dict[str, Any], label: str) -> None:
        self._setting, self._defaults, self._label = setting, defaults, label
        setting_changed.connect(self._changed, weak=False)

    def __getattr__(self, name: str) -> Any:
        defaults = self._defaults
        if name.startswith("_") or name not in defaults:
            raise AttributeError(f"Invalid {self._label} setting: {name!r}")
        user = getattr(settings, self._setting, {}) or {}
        value = self.__dict__[name] = user.get(name, defaults[name])
        return value

    def reload(self) -> None:
        self.__dict__.clear()

    def _changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting == self._setting:
            self.reload()


dorm_settings = AppSettings("DORM", DEFAULTS, "Dorm")
