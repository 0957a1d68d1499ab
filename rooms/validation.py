"""A client message checked against its room kind, at the edge.

The consumer runs this on every frame before the frame goes to the room's
actor, so an unknown type, a scope too small or a payload outside the kind's
schema (numbers, bounds, lengths, depth, key counts, size) costs the actor
nothing and, in the distributed mode, never crosses to the owner process. The
actor checks again (it is the authority for every entry point: frames, REST
publishes, server events) and adds the checks that need the room's state
(``RoomKind.check``).
"""

from __future__ import annotations

from typing import Any

import orjson

from rooms.kinds.base import RoomKind
from rooms.protocol import ErrorReason
from rooms.runtime.connection import SCOPE_RANK
from rooms.schema import Invalid


def refuse(kind: type[RoomKind], scope: str, type_: str, payload: Any) -> tuple[str, str | None] | None:
    """None when the message may go to the actor, else ``(error reason, detail)``."""
    mtype = kind.message_type(type_)
    if mtype is None:
        return ErrorReason.UNKNOWN_TYPE, None
    if SCOPE_RANK[scope] < SCOPE_RANK[mtype.scope]:
        return ErrorReason.FORBIDDEN, None
    try:
        mtype.schema.validate(payload)
    except Invalid as exc:
        return ErrorReason.INVALID_MESSAGE, str(exc)
    if payload is not None and len(orjson.dumps(payload)) > mtype.max_payload_bytes:
        return ErrorReason.INVALID_MESSAGE, f"payload: larger than {mtype.max_payload_bytes} bytes"
    return None
