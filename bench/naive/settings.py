"""Settings of the naive baseline: the Channels tutorial setup, nothing tuned.

No database and no apps beyond Channels: the baseline persists nothing, so the
benchmark compares Dorm's fan-out (with its commit before broadcast) against
plain ``group_send`` fan-out.
"""

from __future__ import annotations

DEBUG = False
SECRET_KEY = "naive-baseline-benchmark-only"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "bench.naive.urls"
ASGI_APPLICATION = "bench.naive.asgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# The tutorial's layer with its default capacity (100 messages per channel):
# a consumer that falls behind has group messages dropped without a trace.
# That silent loss is part of what the benchmark measures, so it stays as is.
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
