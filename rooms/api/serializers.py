"""Request and response shapes of the REST API (they are also the OpenAPI schema)."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from rooms.kinds import kind_names
from rooms.models import Room, slug_validator
from rooms.runtime import publish
from rooms.protocol import MAX_CLIENT_ID_CHARS, MAX_USER_ID_CHARS, MESSAGE_TYPE_RE

# Kind settings are small configuration objects, not data.
MAX_SETTINGS_KEYS = 64


class RoomSerializer(serializers.ModelSerializer):
    slug = serializers.CharField(max_length=64, validators=[slug_validator])
    kind = serializers.ChoiceField(choices=[], required=False)
    settings = serializers.DictField(required=False, help_text="kind settings")
    max_connections = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1_000_000)
    latest_seq = serializers.SerializerMethodField(help_text="seq of the room's last durable event (0: none)")
    connections = serializers.SerializerMethodField(help_text="live WebSocket connections")

    class Meta:
        model = Room
        fields = ["slug", "kind", "private", "max_connections", "settings", "created_at", "latest_seq", "connections"]
        read_only_fields = ["created_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Kinds are configuration (DORM["KINDS"]): read them per request.
        self.fields["kind"].choices = kind_names()

    def get_latest_seq(self, room: Room) -> int:
        # Annotated by the list/detail queries (one index lookup per room).
        return getattr(room, "latest_seq", None) or 0

    def get_connections(self, room: Room) -> int:
        return publish.connection_count(room.slug)

    def validate_settings(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_SETTINGS_KEYS:
            raise serializers.ValidationError(f"at most {MAX_SETTINGS_KEYS} keys")
        if "\\u0000" in json.dumps(value):
            # PostgreSQL's jsonb cannot store NUL characters.
            raise serializers.ValidationError("NUL characters are not allowed")
        return value


class EventSerializer(serializers.Serializer):
    """A durable event as clients received it, with its tombstone mark."""

    seq = serializers.IntegerField()
    type = serializers.CharField()
    userId = serializers.CharField()
    payload = serializers.JSONField(allow_null=True)
    ts = serializers.IntegerField(help_text="server time in ms when the event was ordered")
    tombstoned = serializers.BooleanField(help_text="a later erase event removed this one")
    erasedBy = serializers.IntegerField(allow_null=True, help_text="seq of that erase event")


class StateSerializer(serializers.Serializer):
    seq = serializers.IntegerField(help_text="the state is as it was right after this event")
    kind = serializers.CharField()
    state = serializers.JSONField(help_text="the kind's snapshot, as in a welcome frame")


class HistoryPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="the next page; null when this page was not full")
    results = EventSerializer(many=True)


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class StateParams(serializers.Serializer):
    seq = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1)


class PublishSerializer(serializers.Serializer):
    type = serializers.RegexField(rf"^{MESSAGE_TYPE_RE.pattern}\Z", max_length=32)
    payload = serializers.JSONField(required=False, allow_null=True)
    userId = serializers.CharField(
        required=False,
        max_length=MAX_USER_ID_CHARS,
        trim_whitespace=False,
        help_text="publish as this user (default: the API user's username)",
    )

    def validate_userId(self, value: str) -> str:
        if not value.isprintable():
            raise serializers.ValidationError("must be printable characters")
        return value


class AckSerializer(serializers.Serializer):
    seq = serializers.IntegerField(allow_null=True, help_text="null for ephemeral types")
    id = serializers.CharField(allow_null=True, help_text="the Idempotency-Key, when one was given")


class RestoreSerializer(serializers.Serializer):
    seq = serializers.IntegerField(min_value=0, max_value=2**63 - 1, help_text="restore the state right after this event")


IDEMPOTENCY_KEY_MAX_CHARS = MAX_CLIENT_ID_CHARS
