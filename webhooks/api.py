"""Registering webhook endpoints over REST: ``/api/webhooks/``.

An account registers endpoints for one of its rooms (``room``) or for all of
them (no ``room``); staff see every endpoint. The secret is shown to the
owner, who needs it to check signatures.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, serializers

from rooms.api.errors import ERRORS
from rooms.models import Room
from webhooks.models import EVENT_TYPES, Endpoint, https_only


class EndpointSerializer(serializers.ModelSerializer):
    url = serializers.URLField(max_length=2000, validators=[https_only])
    events = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_TYPES), min_length=1, max_length=len(EVENT_TYPES))
    room = serializers.SlugRelatedField(
        slug_field="slug", queryset=Room.objects.all(), required=False, allow_null=True, help_text="one room; omit for all your rooms"
    )

    class Meta:
        model = Endpoint
        fields = ["id", "url", "events", "room", "active", "secret", "created_at"]
        read_only_fields = ["id", "secret", "created_at"]

    def validate_room(self, room: Room | None) -> Room | None:
        user = self.context["request"].user
        if room is not None and not user.is_staff and room.owner_id != user.pk:
            raise serializers.ValidationError("not one of your rooms")
        return room

    def validate_events(self, events: list[str]) -> list[str]:
        return sorted(set(events))


def _endpoints(user: Any) -> QuerySet[Endpoint]:
    endpoints = Endpoint.objects.select_related("room")
    return endpoints if user.is_staff else endpoints.filter(owner=user)


@extend_schema_view(
    get=extend_schema(summary="Your webhook endpoints (staff: all)", responses={200: EndpointSerializer(many=True), **ERRORS}),
    post=extend_schema(summary="Register a webhook endpoint", responses={201: EndpointSerializer, **ERRORS}),
)
@extend_schema(tags=["webhooks"])
class EndpointList(generics.ListCreateAPIView):
    serializer_class = EndpointSerializer
    pagination_class = None

    def get_queryset(self) -> QuerySet[Endpoint]:
        return _endpoints(self.request.user)

    def perform_create(self, serializer: EndpointSerializer) -> None:
        serializer.save(owner=self.request.user)


@extend_schema_view(
    get=extend_schema(summary="One webhook endpoint", responses={200: EndpointSerializer, **ERRORS}),
    patch=extend_schema(summary="Change a webhook endpoint", responses={200: EndpointSerializer, **ERRORS}),
    delete=extend_schema(summary="Remove a webhook endpoint", responses={204: None, **ERRORS}),
)
@extend_schema(tags=["webhooks"])
class EndpointDetail(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = EndpointSerializer
    http_method_names = ["get", "patch", "delete"]

    def get_queryset(self) -> QuerySet[Endpoint]:
        return _endpoints(self.request.user)
