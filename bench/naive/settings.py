"""Settings of the naive baseline: the Channels tutorial setup, nothing tuned.

No database and no apps beyond Channels: the baseline persists nothing, so the
benchmark compares Dorm's fan-out (with its commit before broadcast) against
plain ``group_send`` fan-out.
"""

from __future__ import annotations

import os

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

# bench/cluster.py runs the same consumer on channels-redis, across processes:
# NAIVE_LAYER=redis (RedisChannelLayer, the core layer) or pubsub
# (RedisPubSubChannelLayer), both with their default settings, on NAIVE_REDIS_URL.
_layer = os.environ.get("NAIVE_LAYER", "memory")
_redis = os.environ.get("NAIVE_REDIS_URL", "redis://127.0.0.1:6379/0")
if _layer == "redis":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [_redis]}}}
elif _layer == "pubsub":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [_redis]}}}
elif _layer != "memory":
    raise ValueError(f"NAIVE_LAYER must be memory, redis or pubsub, not {_layer!r}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
