"""Wire protocol v1 constants and frame builders (see shared/PROTOCOL.md).

Every server-to-client frame is built here, serialized once with orjson; the
same text is written to every recipient.
"""

from __future__ import annotations

import re
import time
from enum import IntEnum
from typing import Any

import orjson

PROTOCOL_VERSION = 1

# `type` of a client frame.
MESSAGE_TYPE_RE = re.compile(r"[a-z_]{1,32}")
ROOM_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_CLIENT_ID_CHARS = 64
MAX_USER_ID_CHARS = 128


class CloseCode(IntEnum):
    """Close codes a client can act on (PROTOCOL.md section 1)."""

    NORMAL = 1000
    # Server shutting down or room moving: reconnect at once with `since`.
    GOING_AWAY = 1001
    # Abuse after warnings: do not retry at once.
    POLICY_VIOLATION = 1008
    # Frame over the hard size limit.
    MESSAGE_TOO_BIG = 1009
    # Temporary server-side failure (never 1011: some mobile stacks stop
    # reconnecting after it). Retry with backoff.
    TRY_AGAIN_LATER = 1013
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401
    OVER_BUDGET = 4402
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    # The client read slower than its room talked and its outbound buffer hit
    # the bound (backpressure.py): reconnect with `since` (docs/runtime.md).
    TOO_SLOW = 4408
    ROOM_FULL = 4409
    TOO_MANY_CONNECTIONS = 4429


class ErrorReason:
    """`reason` of `error` frames (PROTOCOL.md section 5)."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def event_frame(type_: str, seq: int | None, user_id: str, payload_json: str, ts: int) -> str:
    """A broadcast event; ``payload_json`` is embedded as-is (no re-encoding)."""
    frame: dict[str, Any] = {"type": type_}
    if seq is not None:
        frame["seq"] = seq
    frame["userId"] = user_id
    if payload_json:
        frame["payload"] = orjson.Fragment(payload_json)
    frame["ts"] = ts
    return orjson.dumps(frame).decode()


def ack_frame(client_id: str, seq: int | None) -> str:
    if seq is None:
        return orjson.dumps({"type": "ack", "id": client_id}).decode()
    return orjson.dumps({"type": "ack", "id": client_id, "seq": seq}).decode()


def error_frame(reason: str, client_id: str | None = None, detail: str | None = None, code: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "reason": reason}
    if client_id is not None:
        frame["id"] = client_id
    if detail:
        frame["detail"] = detail
    if code:
        frame["code"] = code
    return orjson.dumps(frame).decode()


def close_frame(code: int, reason: str) -> str:
    return orjson.dumps({"type": "close", "code": int(code), "reason": reason}).decode()
