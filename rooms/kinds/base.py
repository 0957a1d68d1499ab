"""The room kind: what a room *is* (a whiteboard, a chat, a poll).

A kind declares its message types (durable or ephemeral, each with a payload
schema), how durable events fold into its state, and what a joining client is
shown. Ordering, persistence, acknowledgement, fan-out and presence are the
runtime's job, so a kind is a page of code. Hooks do nothing by default, like
partyserver's ``Server``: override only what the kind needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rooms.schema import Json, Schema

if TYPE_CHECKING:
    from rooms.runtime.actor import RoomContext
    from rooms.runtime.messages import Peer


class Reject(Exception):
    """A kind refuses a message given the room's state (sent as invalid_message)."""


@dataclass(frozen=True, slots=True)
class MessageType:
    durable: bool
    schema: Schema
    # Largest serialized payload accepted, in bytes.
    max_payload_bytes: int = 16 * 1024
    # Smallest token scope allowed to send it: "read" < "write" < "host".
    scope: str = "write"


def durable(schema: Schema, *, max_payload_bytes: int = 16 * 1024, scope: str = "write") -> MessageType:
    return MessageType(True, schema, max_payload_bytes, scope)


def ephemeral(schema: Schema, *, max_payload_bytes: int = 4 * 1024, scope: str = "write") -> MessageType:
    return MessageType(False, schema, max_payload_bytes, scope)


@dataclass(slots=True)
class DurableEvent:
    """A durable event as a kind's ``fold`` sees it."""

    seq: int
    type: str
    user_id: str
    payload: Any
    ts: int


@dataclass(slots=True)
class Incoming:
    """A client message as ``check`` and ``on_message`` see it."""

    type: str
    user_id: str
    payload: Any


# A staff point-in-time recovery: `{"seq": N, "state": <dump_state at N>,
# "snapshot": <snapshot at N>}`. Folding it replaces the state wholesale, so
# history is never rewritten and every replica of the fold (wake-ups, time
# travel) agrees. Only the server may send it (scope "server": no client token
# carries that scope); the payload is built by the server from its own log,
# hence the generous bounds (a whole board's state).
RESTORE_TYPE = "restore"
RESTORE_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024

# Message types every kind understands (PROTOCOL.md section 5). `ping` and
# `heartbeat` are answered by the consumer itself and never reach the actor.
BUILTIN_MESSAGES: dict[str, MessageType] = {
    # Read-only members are still present: they may say "away" or "typing".
    "presence": ephemeral(
        Json(object_only=True, max_depth=4, max_keys=32, max_string_chars=256), max_payload_bytes=1024, scope="read"
    ),
    "cursor": ephemeral(Json(max_depth=4, max_keys=32, max_string_chars=256), max_payload_bytes=1024),
    RESTORE_TYPE: durable(
        Json(
            object_only=True,
            number_bound=2.0**63,
            max_depth=64,
            max_keys=10_000_000,
            max_items=10_000_000,
            max_string_chars=RESTORE_MAX_PAYLOAD_BYTES,
        ),
        max_payload_bytes=RESTORE_MAX_PAYLOAD_BYTES,
        scope="server",
    ),
}

# Types the server sends; a kind may not declare them.
RESERVED_TYPES = frozenset(
    {
        "welcome",
        "ack",
        "error",
        "close",
        "user_joined",
        "user_left",
        "pong",
        "rate_limited",
        "ping",
        "heartbeat",
        RESTORE_TYPE,
    }
)


class RoomKind:
    """Base class of room kinds. State is any object; ``fold`` may mutate it."""

    name: ClassVar[str] = ""
    messages: ClassVar[dict[str, MessageType]] = {}
    # Kinds that speak a binary protocol (Yjs) set this.
    accepts_binary: ClassVar[bool] = False

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = settings or {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        clash = RESERVED_TYPES & set(cls.messages)
        if clash:
            raise TypeError(f"{cls.__name__} declares reserved message types {sorted(clash)}")

    @classmethod
    def message_type(cls, type_: str) -> MessageType | None:
        return cls.messages.get(type_) or BUILTIN_MESSAGES.get(type_)

    # -- state --------------------------------------------------------------

    def initial_state(self) -> Any:
        return {}

    def fold(self, state: Any, event: DurableEvent) -> Any:
        """Apply one durable event to the state and return the state."""
        return state

    def apply(self, state: Any, event: DurableEvent) -> Any:
        """What the runtime calls for every durable event: ``fold``, or a restore.

        Restores are handled here, once for every kind, so a kind's ``fold``
        never sees them.
        """
        if event.type == RESTORE_TYPE:
            return self.load_state(event.payload["state"])
        return self.fold(state, event)

    def check(self, state: Any, message: Incoming) -> None:
        """Refuse a message the state makes invalid (raise :class:`Reject`)."""

    def snapshot(self, state: Any) -> Any:
        """What a joining client is shown as ``welcome.state`` (JSON-able)."""
        return state

    def dump_state(self, state: Any) -> Any:
        """The full state as a JSON-able value, for stored snapshots."""
        return state

    def load_state(self, data: Any) -> Any:
        return data

    # -- hooks (no-ops by default) -------------------------------------------

    async def on_start(self, room: RoomContext) -> None:
        """Runs once after the state is loaded, before any frame is handled."""

    async def on_connect(self, room: RoomContext, peer: Peer) -> None:
        """A connection joined (after its welcome was sent)."""

    async def on_message(self, room: RoomContext, message: Incoming, seq: int | None) -> None:
        """A message was accepted (durable ones: after commit and broadcast)."""

    async def on_close(self, room: RoomContext, peer: Peer) -> None:
        """A connection left."""

    async def on_alarm(self, room: RoomContext, name: str) -> None:
        """A durable alarm fired (see the alarms issue)."""
