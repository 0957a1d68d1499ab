"""Dorm settings, read from the environment (12-factor).

With nothing set, Dorm runs in the *embedded* mode: one process, SQLite in WAL
mode, the in-process channel layer. ``DATABASE_URL`` and ``REDIS_URL`` are the
seam for the distributed mode (PostgreSQL, channels-redis).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_text_or_file(name: str) -> str:
    """``NAME`` itself, or the content of the file at ``NAME_FILE`` (mounted secrets)."""
    value = os.environ.get(name, "")
    path = os.environ.get(f"{name}_FILE", "")
    if not value and path:
        value = Path(path).read_text()
    return value


# ---------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------

# Development default: on. Production deployments set DJANGO_DEBUG=false.
DEBUG = env_bool("DJANGO_DEBUG", True)

# A fixed development key so `make run` works with nothing set; production must
# set DJANGO_SECRET_KEY (checked by `manage.py check --deploy`).
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "dorm-insecure-development-key-change-me-in-production"
)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")

# Signs room tokens in development only (see DORM["TOKEN_SECRET"] below).
DEV_TOKEN_SECRET = "dorm-insecure-development-token-secret-change-me"

INSTALLED_APPS = [
    # daphne first so that `runserver` serves the ASGI application.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    # DRF tokens: how app backends authenticate to ask for room tokens.
    "rest_framework.authtoken",
    "drf_spectacular",
    # Swagger UI served from our own static files (no CDN at /api/docs/).
    "drf_spectacular_sidecar",
    "rooms",
    "presence",
    "billing",
    "webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# ---------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------

# Embedded mode: SQLite in WAL mode so readers (REST, admin) never block the
# room actors' writer. synchronous=FULL by default: an acknowledged event must
# survive a power cut, not only a process crash; NORMAL is faster and is
# offered for those who accept that trade.
SQLITE_PATH = os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3"))
SQLITE_SYNCHRONOUS = os.environ.get("SQLITE_SYNCHRONOUS", "FULL").upper()

# A room's database calls are aborted after this many seconds
# (rooms/runtime/db_watchdog.py); also bounds connecting to PostgreSQL.
DB_TIMEOUT_SECONDS = env_float("DORM_DB_TIMEOUT_SECONDS", 5.0)

if os.environ.get("DATABASE_URL"):
    # Distributed mode: PostgreSQL through psycopg 3.
    DATABASES = {
        "default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=600, conn_health_checks=True)
    }
    # A frozen server must not hang a (re)connect forever: libpq gives up
    # after connect_timeout (whole seconds, at least 2).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", max(2, int(DB_TIMEOUT_SECONDS + 0.999))
    )
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            # Keep the connection: Channels' database_sync_to_async closes
            # "obsolete" connections around every call, and with the default
            # of 0 each group commit would reopen the file and rerun the
            # PRAGMAs (measured: 2.5 ms per commit instead of 0.5 ms).
            "CONN_MAX_AGE": None,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {
                # BEGIN IMMEDIATE: a writing transaction takes the write lock at
                # its start, so two writers queue on busy_timeout instead of
                # failing with "database is locked" half-way through.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": (
                    "PRAGMA journal_mode=WAL;"
                    f"PRAGMA synchronous={SQLITE_SYNCHRONOUS};"
                    "PRAGMA busy_timeout=20000;"
                ),
            },
            "TEST": {"NAME": os.environ.get("SQLITE_TEST_PATH") or None},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis, with its receive clean-up safe in a Redis outage.
            "BACKEND": "rooms.runtime.channel_layer.DormRedisChannelLayer",
            # Process inboxes carry forwarded frames: room for bursts, and a
            # short expiry so a dead process's inbox does not linger.
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 10_000, "expiry": 30},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# ---------------------------------------------------------------------------
# Celery (distributed mode: beat runs the alarm dispatcher and the periodic
# jobs; the worker runs them and delivers webhooks). The embedded mode needs
# no Celery: its alarms run on a scheduler inside the ASGI process.
# ---------------------------------------------------------------------------

# Redis or RabbitMQ; the distributed mode's Redis by default. Unset: no
# broker, webhooks stay off.
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "") or REDIS_URL
CELERY_BROKER_URL = BROKER_URL or "memory://"
CELERY_TASK_ACKS_LATE = True
# A worker takes one task at a time: a slow webhook receiver must not hold
# back tasks prefetched behind it.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Nothing reads task results: no backend, nothing stored.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Threads, not prefork: the tasks wait on the database and Redis, and one
# worker process is one cluster member that may host the actors of rooms
# nobody else runs (one event loop, one inbox, one set of leases).
CELERY_WORKER_POOL = "threads"
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 4)
# One queue per deployment (tests run several side by side on one Redis).
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "dorm")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# Seconds between alarm dispatcher runs; each looks this far ahead and more.
ALARM_BEAT_SECONDS = env_float("DORM_ALARM_BEAT_SECONDS", 1.0)
CELERY_BEAT_SCHEDULE = {
    # Expire stale copies: a worker back after an outage runs one dispatch,
    # not one per missed second.
    "dispatch-alarms": {
        "task": "rooms.tasks.dispatch_alarms",
        "schedule": ALARM_BEAT_SECONDS,
        "options": {"expires": max(2.0, ALARM_BEAT_SECONDS * 2)},
    },
    "apply-retention": {"task": "rooms.tasks.apply_retention", "schedule": env_float("DORM_RETENTION_EVERY_SECONDS", 3600.0)},
    "roll-up-usage": {"task": "rooms.tasks.roll_up_usage", "schedule": 60.0, "options": {"expires": 60}},
    # Webhook deliveries whose task was lost (broker down when queued).
    "webhooks-requeue-stalled": {"task": "webhooks.tasks.requeue_stalled", "schedule": 60.0},
    # The presence ledger: close sessions of dead processes, apply retention.
    # Every ASGI process runs it too (presence/service.py); this covers the
    # hours when none is up. Idempotent.
    "presence-sweep": {"task": "presence.tasks.sweep", "schedule": 15.0},
}

# ---------------------------------------------------------------------------
# Dorm runtime (read through rooms.conf.dorm_settings; defaults live there)
# ---------------------------------------------------------------------------

DORM = {
    # Seconds without frames after which a room's actor leaves memory.
    "HIBERNATE_AFTER_SECONDS": env_float("DORM_HIBERNATE_AFTER_SECONDS", 30.0),
    "LEASE_TTL_SECONDS": env_float("DORM_LEASE_TTL_SECONDS", 5.0),
    # Deadline of one database call of a room (commit, load, reload); past it
    # the call is aborted and the room degrades (docs/runtime.md, "Database outage").
    "DB_TIMEOUT_SECONDS": DB_TIMEOUT_SECONDS,
    # PostgreSQL: a round of events alone goes on the event loop's own
    # connection, not Django's database thread (rooms/runtime/loop_commit.py).
    "DB_COMMITS_ON_LOOP": env_bool("DORM_DB_COMMITS_ON_LOOP", True),
    # Server processes freeze what survives a full garbage collection and
    # collect everything once this often (0 = Python's own; unset: 600 under
    # daphne, 0 under uvicorn; rooms/runtime/gc_freeze.py).
    "GC_THAW_SECONDS": None if os.environ.get("DORM_GC_THAW_SECONDS", "") == "" else env_float("DORM_GC_THAW_SECONDS", 0.0),
    "OUTBOUND_SOFT_BYTES": env_int("DORM_OUTBOUND_SOFT_BYTES", 256 * 1024),
    "OUTBOUND_MAX_BYTES": env_int("DORM_OUTBOUND_MAX_BYTES", 4 * 1024 * 1024),
    "PENDING_MAX_FRAMES": env_int("DORM_PENDING_MAX_FRAMES", 10_000),
    # Create a room with DEFAULT_KIND on first connect; off -> close 4404.
    "AUTO_CREATE_ROOMS": env_bool("DORM_AUTO_CREATE_ROOMS", True),
    "DEFAULT_KIND": os.environ.get("DORM_DEFAULT_KIND", "whiteboard"),
    # `?userId=` without a token. On for local development only.
    "ALLOW_ANONYMOUS": env_bool("DORM_ALLOW_ANONYMOUS", DEBUG),
    "SOFT_FRAME_LIMIT_BYTES": env_int("DORM_SOFT_FRAME_LIMIT_BYTES", 64 * 1024),
    "HARD_FRAME_LIMIT_BYTES": env_int("DORM_HARD_FRAME_LIMIT_BYTES", 1024 * 1024),
    "SNAPSHOT_EVERY_EVENTS": env_int("DORM_SNAPSHOT_EVERY_EVENTS", 1000),
    "MAX_BATCH_EVENTS": env_int("DORM_MAX_BATCH_EVENTS", 1000),
    "RESUME_MAX_EVENTS": env_int("DORM_RESUME_MAX_EVENTS", 10_000),
    "DIRECT_SOCKET_WRITES": env_bool("DORM_DIRECT_SOCKET_WRITES", True),
    # Room tokens (docs/security.md). The secret signs and checks HS256
    # tokens; a development default exists only with DEBUG on, so a
    # production server without DORM_TOKEN_SECRET refuses every token
    # (and `check --deploy` says so) instead of accepting tokens signed
    # with a secret that is public in this repository.
    "TOKEN_SECRET": os.environ.get("DORM_TOKEN_SECRET") or (DEV_TOKEN_SECRET if DEBUG else ""),
    "TOKEN_ALGORITHM": os.environ.get("DORM_TOKEN_ALGORITHM", "HS256"),
    # RS256/ES256: PEM text, inline or from a file (a mounted secret).
    "TOKEN_PUBLIC_KEY": env_text_or_file("DORM_TOKEN_PUBLIC_KEY"),
    "TOKEN_PRIVATE_KEY": env_text_or_file("DORM_TOKEN_PRIVATE_KEY"),
    "TOKEN_TTL_SECONDS": env_int("DORM_TOKEN_TTL_SECONDS", 15 * 60),
    "TOKEN_LEEWAY_SECONDS": env_float("DORM_TOKEN_LEEWAY_SECONDS", 10.0),
    # Limits (PROTOCOL.md sections 1 and 5); a rate of 0 turns a limit off.
    "CONNECT_RATE_PER_SECOND": env_float("DORM_CONNECT_RATE_PER_SECOND", 10.0),
    "CONNECT_BURST": env_int("DORM_CONNECT_BURST", 60),
    "MESSAGE_RATE_PER_SECOND": env_float("DORM_MESSAGE_RATE_PER_SECOND", 20.0),
    "MESSAGE_BURST": env_int("DORM_MESSAGE_BURST", 40),
    "MAX_CONNECTIONS_PER_ROOM": env_int("DORM_MAX_CONNECTIONS_PER_ROOM", 0) or None,
    # How long a process trusts its cached copy of a room's access settings
    # for new connections; changes saved elsewhere are seen within it (0: off).
    "ROOM_ACCESS_CACHE_SECONDS": env_float("DORM_ROOM_ACCESS_CACHE_SECONDS", 5.0),
    # Distributed mode: the limit counters live in Redis, shared by every process.
    "LIMITS_REDIS_URL": os.environ.get("DORM_LIMITS_REDIS_URL", REDIS_URL),
    "LIMITS_KEY_PREFIX": os.environ.get("DORM_LIMITS_KEY_PREFIX", "dorm:limits:"),
    # Webhooks need a Celery broker to deliver through.
    "WEBHOOKS": env_bool("DORM_WEBHOOKS", bool(BROKER_URL)),
    "WEBHOOK_BACKOFF_SECONDS": env_float("DORM_WEBHOOK_BACKOFF_SECONDS", 2.0),
    "WEBHOOK_DURABLE_THROTTLE_SECONDS": env_float("DORM_WEBHOOK_DURABLE_THROTTLE_SECONDS", 1.0),
    # Presence (docs/presence.md). Silent sockets go offline after the TTL;
    # clients send `heartbeat` at a third of it.
    "PRESENCE_TTL_SECONDS": env_float("DORM_PRESENCE_TTL_SECONDS", 60.0),
    "PRESENCE_SWEEP_SECONDS": env_float("DORM_PRESENCE_SWEEP_SECONDS", 5.0),
    "PRESENCE_COALESCE_MS": env_int("DORM_PRESENCE_COALESCE_MS", 100),
    "PRESENCE_FANOUT_PER_SECOND": env_int("DORM_PRESENCE_FANOUT_PER_SECOND", 2000),
    "PRESENCE_PROCESS_FANOUT_PER_SECOND": env_int("DORM_PRESENCE_PROCESS_FANOUT_PER_SECOND", 10000),
    "PRESENCE_LEDGER_RETENTION_DAYS": env_int("DORM_PRESENCE_LEDGER_RETENTION_DAYS", 30),
    # Distributed mode: live presence in Redis, so it survives a room moving
    # and a dead process's entries expire by their score.
    "PRESENCE_REDIS_URL": os.environ.get("DORM_PRESENCE_REDIS_URL", REDIS_URL),
    "PRESENCE_KEY_PREFIX": os.environ.get("DORM_PRESENCE_KEY_PREFIX", "dorm:presence:"),
    # Alarms: see docs/alarms.md. "auto": Celery beat when REDIS_URL is set,
    # else a scheduler task inside the ASGI process.
    "ALARM_SCHEDULER": os.environ.get("DORM_ALARM_SCHEDULER", "auto"),
    "ALARM_CLAIM_SECONDS": env_float("DORM_ALARM_CLAIM_SECONDS", 10.0),
    "ALARM_RETRY_BASE_SECONDS": env_float("DORM_ALARM_RETRY_BASE_SECONDS", 1.0),
    "ALARM_MAX_ATTEMPTS": env_int("DORM_ALARM_MAX_ATTEMPTS", 6),
    # Kinds beyond the built-in ones: "name=dotted.Path,other=pkg.Kind".
    "KINDS": {
        "whiteboard": "rooms.kinds.whiteboard.Whiteboard",
        "chat": "rooms.kinds.chat.Chat",
        "poll": "rooms.kinds.poll.Poll",
        "qa": "rooms.kinds.qa.QA",
        "seats": "rooms.kinds.seats.Seats",
        "game": "rooms.kinds.game.GameTick",
        "yjs": "rooms.kinds.yjs.YjsDocument",
        **dict(
            item.strip().split("=", 1)
            for item in os.environ.get("DORM_EXTRA_KINDS", "").split(",")
            if "=" in item
        ),
    },
}

# ---------------------------------------------------------------------------
# Billing (read through billing.conf.billing_settings; docs/billing.md)
# ---------------------------------------------------------------------------

BILLING = {
    # Count usage on the hot path; off only to measure the meter's overhead.
    "METERING": env_bool("DORM_METERING", True),
    # Each process adds its counters to the database this often (a minute).
    "FLUSH_SECONDS": env_float("DORM_BILLING_FLUSH_SECONDS", 60.0),
    # Bearer token for Prometheus scrapers of /metrics (else staff only).
    "METRICS_TOKEN": os.environ.get("DORM_METRICS_TOKEN", ""),
    # The latency alert fires when the median client round trip of sessions
    # older than 30 s is above this over the last 5 minutes.
    "LATENCY_ALERT_MS": env_float("DORM_LATENCY_ALERT_MS", 250.0),
    # Only sessions at least this old count for the alert (a fresh socket's
    # first round trips include connection setup).
    "ALERT_MIN_SESSION_SECONDS": env_float("DORM_ALERT_MIN_SESSION_SECONDS", 30.0),
}

# ---------------------------------------------------------------------------
# Security for production (`manage.py check --deploy` is clean with DEBUG off;
# tests/security/test_deploy.py runs it). Dorm is expected behind a TLS
# terminating proxy or load balancer.
# ---------------------------------------------------------------------------

# Browser origins allowed to open WebSockets and to POST with a session
# cookie, e.g. "https://app.example.com". Hosts in ALLOWED_HOSTS are allowed
# too (rooms/asgi.py); clients without an Origin header (apps, bots) are not
# browsers and are checked by their token instead.
ALLOWED_ORIGINS = env_list("DJANGO_ALLOWED_ORIGINS")
CSRF_TRUSTED_ORIGINS = [o for o in ALLOWED_ORIGINS if "://" in o]

# The proxy says which requests came over TLS; without this header Django
# would see every request as plain HTTP and the redirect below would loop.
if env_bool("DJANGO_BEHIND_TLS_PROXY", not DEBUG):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
# Load balancer health checks come over plain HTTP from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# Cookies (admin session, CSRF) only over TLS in production.
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
# HSTS: browsers refuse plain HTTP to this host for a year once seen over TLS.
# Off in development (it would stick to localhost in the developer's browser).
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
# The preload directive alone does nothing until the domain is submitted to
# hstspreload.org; set it false if subdomains may ever serve plain HTTP.
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# ---------------------------------------------------------------------------
# Internationalization, static files
# ---------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# ---------------------------------------------------------------------------
# Logging: metadata only (room, user, type, sizes, codes), never payloads.
# ---------------------------------------------------------------------------

LOG_LEVEL = os.environ.get("DORM_LOG_LEVEL", "INFO")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "dorm": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        # uvicorn logs handshake URLs with their query string: rooms/redact.py
        # filters `?token=` out of them (daphne logs paths only).
        "django": {"handlers": ["console"], "level": "WARNING"},
    },
}

# ---------------------------------------------------------------------------
# REST API (rooms/api/, PROTOCOL.md section 6)
# ---------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # A JSON API. (Multipart bodies also never reach Django under daphne:
    # Twisted parses them itself and answers a malformed one with a bare 400.)
    "DEFAULT_PARSER_CLASSES": ["rooms.api.parsers.JSONParser"],
    # Token first: its WWW-Authenticate header makes an anonymous request a
    # 401 (with session auth first DRF answers 403, which means "forbidden").
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_THROTTLE_RATES": {"room_token": os.environ.get("DORM_TOKEN_ISSUE_RATE", "120/min")},
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # JSON bodies for the errors DRF does not know (413, refused publishes).
    "EXCEPTION_HANDLER": "rooms.api.errors.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Dorm REST API",
    "DESCRIPTION": "Rooms, history, state and server-side publish (PROTOCOL.md section 6).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # The schema and docs are public: they describe the API, not its data.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
}
