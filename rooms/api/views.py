"""REST endpoints of PROTOCOL.md section 6: rooms, history, state, publish, restore.

Views are sync DRF views: they read the database directly (committed events
only) and write through the room's actor via :mod:`rooms.runtime.publish`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIRequest
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied, Throttled
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from rooms import limits
from rooms.api import history
from rooms.api.errors import ERRORS, Conflict, PayloadTooLarge, ServiceUnavailable
from rooms.api.pagination import HistoryParams, SeqCursorPagination
from rooms.api.permissions import IsStaff, listed_rooms, may_write, visible_rooms
from rooms.api.serializers import (
    IDEMPOTENCY_KEY_MAX_CHARS,
    AckSerializer,
    ErrorSerializer,
    HistoryPageSerializer,
    PublishSerializer,
    RestoreSerializer,
    RoomSerializer,
    StateParams,
    StateSerializer,
)
from rooms.api.timetravel import SeqAhead, state_at
from rooms.auth import Identity
from rooms.conf import dorm_settings
from rooms.kinds.base import RESTORE_MAX_PAYLOAD_BYTES, RESTORE_TYPE
from rooms.models import Event, Room
from rooms.protocol import MAX_USER_ID_CHARS
from rooms.runtime import publish

log = logging.getLogger("dorm.api")


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description=(
        f"1-{IDEMPOTENCY_KEY_MAX_CHARS} characters. A retry with the same key (same user, within 10 minutes) "
        "is applied once and answered with the first seq."
    ),
)


SLUG = OpenApiParameter(
    "slug",
    str,
    OpenApiParameter.PATH,
    description="the room id: 1-64 characters of A-Z a-z 0-9 _ -",
    examples=[OpenApiExample("a room", value="board-1")],
)


def _with_latest_seq(rooms: QuerySet[Room]) -> QuerySet[Room]:
    # One (room, seq) index lookup per room, not a scan of its log.
    last = Event.objects.filter(room=OuterRef("pk")).order_by("-seq").values("seq")[:1]
    return rooms.annotate(latest_seq=Subquery(last))


def _publisher(request: Request) -> str:
    return request.user.get_username()[:MAX_USER_ID_CHARS]


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX_CHARS or not key.isprintable():
        raise serializers.ValidationError({"Idempotency-Key": [f"must be 1-{IDEMPOTENCY_KEY_MAX_CHARS} printable characters"]})
    return key


def _publish(request: Request, room: str, user_id: str, type_: str, payload: Any, key: str | None, scope: str) -> dict[str, Any]:
    """Run the publish coroutine on the server's loop, where the actors live."""
    if not isinstance(request._request, ASGIRequest):
        # Under WSGI there is no server loop hosting actors: an actor started
        # in a throwaway loop would die with it.
        raise ServiceUnavailable("publishing needs the ASGI server (daphne or uvicorn)")
    return async_to_sync(publish.publish)(room, user_id, type_, payload, key, scope=scope)


class RoomPagination(CursorPagination):
    ordering = "slug"
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 1000


@extend_schema(tags=["rooms"])
class RoomList(generics.ListCreateAPIView):
    serializer_class = RoomSerializer
    pagination_class = RoomPagination

    def get_queryset(self) -> QuerySet[Room]:
        return _with_latest_seq(listed_rooms(self.request.user))

    @extend_schema(summary="Rooms you own (staff: all rooms)", responses={200: RoomSerializer(many=True), **ERRORS})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Create a room",
        responses={201: RoomSerializer, 409: OpenApiResponse(ErrorSerializer, description="slug taken"), **ERRORS},
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)

    def perform_create(self, serializer: RoomSerializer) -> None:
        data = serializer.validated_data
        if Room.objects.filter(slug=data["slug"]).exists():
            raise Conflict("a room with this slug exists")
        data.setdefault("kind", dorm_settings.DEFAULT_KIND)
        try:
            with transaction.atomic():
                serializer.save(owner=self.request.user)
        except IntegrityError:  # created concurrently
            raise Conflict("a room with this slug exists") from None
        log.info("room created room=%s kind=%s owner=%s", data["slug"], data["kind"], self.request.user.pk)


@extend_schema(exclude=True)
class RoomListNoSlash(RoomList):
    """``/api/rooms`` as ``/api/rooms/`` (kept out of the schema: one path per operation)."""


@extend_schema(tags=["rooms"])
class RoomDetail(generics.RetrieveAPIView):
    serializer_class = RoomSerializer
    lookup_field = "slug"

    def get_queryset(self) -> QuerySet[Room]:
        return _with_latest_seq(visible_rooms(self.request.user))

    @extend_schema(summary="One room", parameters=[SLUG], responses={200: RoomSerializer, **ERRORS})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class RoomMixin:
    request: Request

    def room(self, slug: str) -> Room:
        return get_object_or_404(visible_rooms(self.request.user), slug=slug)


@extend_schema(tags=["history"])
class History(RoomMixin, APIView):
    paginator = SeqCursorPagination()

    @extend_schema(
        summary="Durable events by seq",
        description=(
            "`since=N`: events with seq > N, ascending (default since=0). `before=N`: events with seq < N, "
            "newest first. Follow `next` for the next page: stable while the room is being written to."
        ),
        parameters=[SLUG, HistoryParams],
        responses={200: HistoryPageSerializer, **ERRORS},
    )
    def get(self, request: Request, slug: str) -> Response:
        room = self.room(slug)
        query = self.paginator.parse(request)
        rows = history.page(room.pk, query)
        erased: dict[int, int] = {}
        if rows:
            seqs = (rows[0][0], rows[-1][0])
            erased = history.erased_by(room.pk, min(seqs), max(seqs))
        return self.paginator.response(request, query, history.as_json(rows, erased))


@extend_schema(tags=["state"])
class State(RoomMixin, APIView):
    @extend_schema(
        summary="The room's state, now or right after event `seq`",
        description="From the nearest stored snapshot plus the log; `seq` is the point in time (time travel).",
        parameters=[SLUG, StateParams],
        responses={200: StateSerializer, 409: OpenApiResponse(ErrorSerializer, description="the room's kind is not installed"), **ERRORS},
    )
    def get(self, request: Request, slug: str) -> Response:
        room = self.room(slug)
        params = StateParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        try:
            kind, seq, state = state_at(room, params.validated_data.get("seq"))
        except SeqAhead as exc:
            raise serializers.ValidationError({"seq": [str(exc)]}) from None
        return Response({"seq": seq, "kind": kind.name, "state": kind.snapshot(state)})


@extend_schema(tags=["publish"])
class Messages(RoomMixin, APIView):
    @extend_schema(
        summary="Publish an event through the room's actor",
        description=(
            "Handled exactly like a WebSocket frame of the publishing user: validated for the room's kind, "
            "ordered with the room's WebSocket traffic, committed, broadcast, then answered with its seq."
        ),
        request=PublishSerializer,
        parameters=[SLUG, IDEMPOTENCY_KEY],
        responses={
            201: AckSerializer,
            413: OpenApiResponse(ErrorSerializer, description="payload too large"),
            429: OpenApiResponse(ErrorSerializer, description="over the rate limit; see Retry-After"),
            503: OpenApiResponse(ErrorSerializer, description="the room could not commit; retry with the same key"),
            **ERRORS,
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        room = self.room(slug)
        if not may_write(request.user, room):
            raise PermissionDenied("only the room's owner and staff publish to it")
        if len(request.body) > dorm_settings.SOFT_FRAME_LIMIT_BYTES:
            raise PayloadTooLarge(f"body larger than {dorm_settings.SOFT_FRAME_LIMIT_BYTES} bytes")
        body = PublishSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        key = _idempotency_key(request)
        user_id = data.get("userId") or _publisher(request)
        wait_ms = async_to_sync(limits.admit_message)(Identity(user_id=user_id, scope="host"), room.slug)
        if wait_ms is not None:
            raise Throttled(wait=wait_ms / 1000)
        ack = _publish(request, room.slug, user_id, data["type"], data.get("payload"), key, "host")
        return Response({"seq": ack.get("seq"), "id": key}, status=status.HTTP_201_CREATED)


@extend_schema(tags=["state"])
class Restore(APIView):
    permission_classes = [IsStaff]

    @extend_schema(
        summary="Restore the room to its state right after event `seq` (staff)",
        description=(
            "Appends a `restore` event carrying that state; history is never rewritten. Connected clients "
            "receive the `restore` event (payload `{seq, state, snapshot}`) and reset to `snapshot`."
        ),
        request=RestoreSerializer,
        parameters=[SLUG, IDEMPOTENCY_KEY],
        responses={
            201: AckSerializer,
            413: OpenApiResponse(ErrorSerializer, description="that state is too large to restore in one event"),
            503: OpenApiResponse(ErrorSerializer, description="the room could not commit; retry with the same key"),
            **ERRORS,
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        room = get_object_or_404(Room, slug=slug)
        body = RestoreSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        target = body.validated_data["seq"]
        key = _idempotency_key(request)
        try:
            kind, seq, state = state_at(room, target)
        except SeqAhead as exc:
            raise serializers.ValidationError({"seq": [str(exc)]}) from None
        payload = {"seq": seq, "state": kind.dump_state(state), "snapshot": kind.snapshot(state)}
        if len(orjson.dumps(payload)) > RESTORE_MAX_PAYLOAD_BYTES:
            raise PayloadTooLarge(f"the state at seq {seq} is larger than {RESTORE_MAX_PAYLOAD_BYTES} bytes")
        ack = _publish(request, room.slug, _publisher(request), RESTORE_TYPE, payload, key, "server")
        log.info("room restored room=%s to_seq=%d restore_seq=%s by=%s", room.slug, seq, ack.get("seq"), request.user.pk)
        return Response({"seq": ack.get("seq"), "id": key}, status=status.HTTP_201_CREATED)
