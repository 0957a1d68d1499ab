"""``POST /api/rooms/<slug>/token``: a room token for an authenticated user.

Browsers call it with their Django session (and CSRF token); app backends
with a DRF token (``Authorization: Token ...``), and may then ask for a token
on behalf of one of their users (``userId``) if the policy allows it. Who
gets which scope is ``DORM["TOKEN_POLICY"]``; the default is below.

Request body (JSON, all optional): ``{"scope": "read" | "write" | "host",
"userId": "..."}``. Response: ``{"token", "expiresAt" (ms since the epoch),
"wsUrl", "scope", "userId"}``.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, Callable
from urllib.parse import urlencode

from django.urls import path
from django.utils.module_loading import import_string
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from rooms import tokens
from rooms.api.errors import ERRORS
from rooms.conf import dorm_settings
from rooms.models import ROOM_SLUG_PATTERN, Room
from rooms.protocol import MAX_USER_ID_CHARS

Policy = Callable[[Any, str, "Room | None", str, str], bool]


def default_policy(user: Any, slug: str, room: Room | None, scope: str, user_id: str) -> bool:
    """Any authenticated user: read or write in public rooms, as themselves.

    Staff users (an app backend's service account, operators) may also enter
    private rooms, take the ``host`` scope and act for another ``userId``.
    Apps with their own membership rules set ``DORM["TOKEN_POLICY"]``.
    """
    if user.is_staff:
        return True
    if user_id != str(user.pk):
        return False
    if scope == "host":
        return False
    return room is None or not room.private


@cache
def _load_policy(path: str) -> Policy:
    return import_string(path)  # type: ignore[no-any-return]


_SLUG_RE = re.compile(ROOM_SLUG_PATTERN)


class TokenRequest(serializers.Serializer):
    scope = serializers.ChoiceField(choices=tokens.SCOPES, default="write")
    userId = serializers.CharField(required=False, min_length=1, max_length=MAX_USER_ID_CHARS, trim_whitespace=False)

    def validate_userId(self, value: str) -> str:
        if not value.isprintable():
            raise serializers.ValidationError("must be printable characters")
        return value


class TokenResponse(serializers.Serializer):
    token = serializers.CharField()
    expiresAt = serializers.IntegerField(help_text="milliseconds since the epoch")
    wsUrl = serializers.CharField()
    scope = serializers.ChoiceField(choices=tokens.SCOPES)
    userId = serializers.CharField()


class Detail(serializers.Serializer):
    detail = serializers.CharField()


class RoomTokenView(APIView):
    permission_classes = [IsAuthenticated]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "room_token"

    @extend_schema(
        tags=["tokens"],
        summary="A short-lived room token (JWT) for a WebSocket connection",
        request=TokenRequest,
        responses={200: TokenResponse, **ERRORS, 429: Detail, 503: Detail},
    )
    def post(self, request: Request, slug: str) -> Response:
        if not _SLUG_RE.fullmatch(slug):
            return Response({"detail": "no such room"}, status=status.HTTP_404_NOT_FOUND)
        body = TokenRequest(data=request.data)
        body.is_valid(raise_exception=True)
        scope: str = body.validated_data["scope"]
        user_id: str = body.validated_data.get("userId") or str(request.user.pk)
        room = Room.objects.filter(slug=slug).first()
        if room is None and not dorm_settings.AUTO_CREATE_ROOMS:
            return Response({"detail": "room does not exist"}, status=status.HTTP_404_NOT_FOUND)
        policy = _load_policy(str(dorm_settings.TOKEN_POLICY))
        if not policy(request.user, slug, room, scope, user_id):
            return Response({"detail": "not allowed for this room and scope"}, status=status.HTTP_403_FORBIDDEN)
        if not tokens.can_issue():
            return Response(
                {"detail": "this server does not issue room tokens (no signing key)"},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        token, claims = tokens.issue(user_id, slug, scope)
        ws_scheme = "wss" if request.is_secure() else "ws"
        ws_url = f"{ws_scheme}://{request.get_host()}/ws/{slug}?{urlencode({'token': token})}"
        return Response(
            {
                "token": token,
                "expiresAt": claims.exp * 1000,
                "wsUrl": ws_url,
                "scope": claims.scope,
                "userId": claims.sub,
            }
        )


# Mounted under /api/ by config/urls.py, beside the REST API's own routes.
urlpatterns = [
    # Any slug reaches the view, so a malformed one gets a JSON 404 (as every
    # /api/ route does) rather than Django's HTML page.
    path("rooms/<str:slug>/token", RoomTokenView.as_view(), name="room-token"),
]
