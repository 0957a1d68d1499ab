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

ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if h.strip()
]

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
    "rooms",
    "presence",
    "billing",
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

if os.environ.get("DATABASE_URL"):
    # Distributed mode: PostgreSQL through psycopg 3.
    DATABASES = {
        "default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=600, conn_health_checks=True)
    }
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
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # Process inboxes carry forwarded frames: room for bursts, and a
            # short expiry so a dead process's inbox does not linger.
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 10_000, "expiry": 30},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# ---------------------------------------------------------------------------
# Dorm runtime (read through rooms.conf.dorm_settings; defaults live there)
# ---------------------------------------------------------------------------

DORM = {
    # Seconds without frames after which a room's actor leaves memory.
    "HIBERNATE_AFTER_SECONDS": env_float("DORM_HIBERNATE_AFTER_SECONDS", 30.0),
    "LEASE_TTL_SECONDS": env_float("DORM_LEASE_TTL_SECONDS", 5.0),
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
        **dict(
            item.strip().split("=", 1)
            for item in os.environ.get("DORM_EXTRA_KINDS", "").split(",")
            if "=" in item
        ),
    },
}

# ---------------------------------------------------------------------------
# Celery (distributed mode: beat runs the alarm dispatcher and periodic jobs)
# ---------------------------------------------------------------------------

# The broker is the distributed mode's Redis; the embedded mode needs no
# Celery at all (its alarms run on a scheduler inside the ASGI process).
CELERY_BROKER_URL = REDIS_URL or "memory://"
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
# Seconds between dispatcher runs; each looks this far ahead and more.
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
    "sweep-stale-presence": {"task": "rooms.tasks.sweep_stale_presence", "schedule": 30.0, "options": {"expires": 30}},
    "roll-up-usage": {"task": "rooms.tasks.roll_up_usage", "schedule": 60.0, "options": {"expires": 60}},
}

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
        "django": {"handlers": ["console"], "level": "WARNING"},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
