"""Billing settings: ``settings.BILLING`` over these defaults (rooms/conf.py's way)."""

from __future__ import annotations

from typing import Any

from rooms.conf import AppSettings

DEFAULTS: dict[str, Any] = {
    # Count usage in memory on the hot path. Off: the meter's calls return at
    # once (the "without" side of the overhead benchmark).
    "METERING": True,
    # How often each ASGI process adds its counters to the database (one
    # upsert per room and minute touched). The issue asks for a minute; tests
    # shorten it.
    "FLUSH_SECONDS": 60.0,
    # /metrics for scrapers that are not a staff session: "Authorization:
    # Bearer <token>". Empty: staff sessions only.
    "METRICS_TOKEN": "",
    # Latency alert: median client-reported round trip of sessions older than
    # ALERT_MIN_SESSION_SECONDS, over the last ALERT_WINDOW_MINUTES.
    "LATENCY_ALERT_MS": 250.0,
    "ALERT_MIN_SESSION_SECONDS": 30.0,
    "ALERT_WINDOW_MINUTES": 5,
}


billing_settings = AppSettings("BILLING", DEFAULTS, "billing")
