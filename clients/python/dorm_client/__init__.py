"""Dorm's Python client (asyncio, ``websockets``): for tests, benchmarks and bots."""

from dorm_client.client import (
    CLOSED,
    CONNECTING,
    IDLE,
    OPEN,
    RECONNECTING,
    TERMINAL_CODES,
    DormClient,
    DormError,
    SendHandle,
    backoff_delay,
)

__all__ = [
    "CLOSED",
    "CONNECTING",
    "IDLE",
    "OPEN",
    "RECONNECTING",
    "TERMINAL_CODES",
    "DormClient",
    "DormError",
    "SendHandle",
    "backoff_delay",
]
