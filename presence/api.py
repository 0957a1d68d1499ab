"""Presence over REST (PROTOCOL.md section 6), Django REST Framework.

- ``GET /api/rooms/<room>/presence``: who is in the room now, per user with
  their connections. Staff, or a user the token policy lets read the room.
- ``GET /api/presence/sessions?room=&user=&at=&since=&until=&limit=&cursor=``:
  the ledger, newest first; ``at`` answers "who was in the room at T"
  (ms since the epoch or ISO 8601). Staff only (operators, app backends).
- ``POST /api/presence/online`` ``{"userIds": [...]}`` (at most 1000): which
  are online in any room, with the rooms. Staff only.

Authentication as for room tokens (``rooms/token_api.py``): the Django
session (browsers, with CSRF) or a DRF token (app backends).
"""

from __future__ import annotations

from datetime import datetime, timezone as dt_timezone
from typing import Any

from asgiref.sync import async_to_sync
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from presence.queries import session_json, sessions, who_was_there
from rooms.api.errors import ERRORS
from rooms.conf import dorm_settings
from rooms.models import Room
from rooms.protocol import MAX_USER_ID_CHARS, ROOM_ID_RE as ROOM_SLUG_RE

MAX_ONLINE_QUERY_IDS = 1000
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _backend() -> Any:
    from rooms.runtime.registry import get_runtime

    return get_runtime().presence


def _instant(value: str, name: str) -> datetime:
    """Milliseconds since the epoch, or ISO 8601 (UTC if no offset)."""
    if value.isdigit() and len(value) <= 15:
        return datetime.fromtimestamp(int(value) / 1000, tz=dt_timezone.utc)
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise serializers.ValidationError({name: "milliseconds since the epoch or an ISO 8601 time"})
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt_timezone.utc)


# -- response shapes (also the OpenAPI schema) -----------------------------------


class ConnectionShape(serializers.Serializer):
    connectionId = serializers.CharField()
    status = serializers.CharField()
    lastSeen = serializers.IntegerField(help_text="ms since the epoch")


class UserShape(serializers.Serializer):
    userId = serializers.CharField()
    status = serializers.CharField(help_text="of the connection that set it most recently")
    meta = serializers.JSONField(allow_null=True, help_text="small metadata the client set with `presence`")
    lastSeen = serializers.IntegerField(help_text="ms since the epoch")
    connections = ConnectionShape(many=True)


class RoomPresenceShape(serializers.Serializer):
    room = serializers.CharField()
    count = serializers.IntegerField(help_text="users present")
    users = UserShape(many=True)


class SessionShape(serializers.Serializer):
    room = serializers.CharField()
    userId = serializers.CharField()
    connectionId = serializers.CharField()
    joinedAt = serializers.IntegerField(help_text="ms since the epoch")
    leftAt = serializers.IntegerField(allow_null=True, help_text="null: still open")
    closeCode = serializers.IntegerField(allow_null=True)
    closeReason = serializers.CharField(allow_blank=True)
    userAgent = serializers.CharField(allow_blank=True)
    addressHash = serializers.CharField(allow_blank=True, help_text="keyed hash of the client address")
    process = serializers.CharField()


class SessionsShape(serializers.Serializer):
    sessions = SessionShape(many=True)
    next = serializers.IntegerField(allow_null=True, help_text="pass as `cursor` for the next page")
    users = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="with `room` and `at`: every user present at T"
    )


class SessionsParams(serializers.Serializer):
    room = serializers.CharField(required=False)
    user = serializers.CharField(required=False)
    at = serializers.CharField(required=False, help_text="ms since the epoch or ISO 8601: sessions open then")
    since = serializers.CharField(required=False, help_text="sessions open at or after this time")
    until = serializers.CharField(required=False, help_text="sessions that began before this time")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT)
    cursor = serializers.IntegerField(required=False)


class OnlineShape(serializers.Serializer):
    online = serializers.ListField(child=serializers.CharField())
    rooms = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


@extend_schema(tags=["presence"])
class RoomPresenceView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Who is in the room now", responses={200: RoomPresenceShape, **ERRORS})
    def get(self, request: Request, slug: str) -> Response:
        if not ROOM_SLUG_RE.fullmatch(slug):
            return Response({"detail": "not found"}, status=status.HTTP_404_NOT_FOUND)
        if not request.user.is_staff:
            from rooms.token_api import _load_policy

            room = Room.objects.filter(slug=slug).first()
            policy = _load_policy(str(dorm_settings.TOKEN_POLICY))
            if not policy(request.user, slug, room, "read", str(request.user.pk)):
                return Response({"detail": "not allowed for this room"}, status=status.HTTP_403_FORBIDDEN)
        users = async_to_sync(_backend().members)(slug)
        return Response({"room": slug, "count": len(users), "users": users})


@extend_schema(tags=["presence"])
class SessionsView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        summary="The presence ledger (staff)",
        description="Sessions newest first. `room` + `at`: who was in the room at that time.",
        parameters=[SessionsParams],
        responses={200: SessionsShape, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        q = request.query_params
        room = q.get("room") or None
        user = q.get("user") or None
        if user is not None and len(user) > MAX_USER_ID_CHARS:
            raise serializers.ValidationError({"user": f"at most {MAX_USER_ID_CHARS} characters"})
        at = _instant(q["at"], "at") if q.get("at") else None
        since = _instant(q["since"], "since") if q.get("since") else None
        until = _instant(q["until"], "until") if q.get("until") else None
        try:
            limit = min(max(int(q.get("limit", DEFAULT_LIMIT)), 1), MAX_LIMIT)
            cursor = int(q["cursor"]) if q.get("cursor") else None
        except ValueError:
            raise serializers.ValidationError({"limit": "an integer"}) from None
        qs = sessions(room=room, user_id=user, at=at, since=since, until=until)
        if cursor is not None:
            qs = qs.filter(id__lt=cursor)
        rows = list(qs.order_by("-id")[: limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        body: dict[str, Any] = {"sessions": [session_json(s) for s in rows], "next": rows[-1].id if more else None}
        if at is not None and room is not None:
            # Every user present at T, not only those on this page.
            body["users"] = who_was_there(room, at) if user is None else sorted({s.user_id for s in rows})
        return Response(body)


class OnlineRequest(serializers.Serializer):
    userIds = serializers.ListField(
        child=serializers.CharField(min_length=1, max_length=MAX_USER_ID_CHARS, trim_whitespace=False),
        max_length=MAX_ONLINE_QUERY_IDS,
    )


@extend_schema(tags=["presence"])
class OnlineView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        summary="Which of these users are online in any room (staff)",
        request=OnlineRequest,
        responses={200: OnlineShape, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        body = OnlineRequest(data=request.data)
        body.is_valid(raise_exception=True)
        user_ids: list[str] = list(dict.fromkeys(body.validated_data["userIds"]))
        found = async_to_sync(_backend().online)(user_ids)
        return Response({"online": sorted(found), "rooms": found})
