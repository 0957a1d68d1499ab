"""Admission and rate limits (PROTOCOL.md sections 1 and 5).

The consumer asks these two questions on every connection and every frame.
This module answers "yes" until the security issue adds the token buckets
(per address 4429, per user `rate_limited`) behind the same two functions.
"""

from __future__ import annotations

from rooms.auth import Identity


def admit_connection(client_address: str, room: str) -> tuple[int, str] | None:
    """None to admit, or ``(close code, reason)`` to refuse."""
    return None


def admit_message(identity: Identity, room: str) -> int | None:
    """None to admit, or the milliseconds the sender should wait."""
    return None
