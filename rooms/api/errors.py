"""JSON errors with the right status for every failure a client can cause.

DRF already answers its own exceptions as ``{"detail": ...}`` or per-field
messages; this adds the few that would otherwise become Django HTML pages or
a 500: a body over Django's upload limit (413) and a refused publish (mapped
from the runtime's typed errors).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from rooms.api.serializers import ErrorSerializer
from rooms.kinds import UnknownKind
from rooms.runtime import publish


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "conflict"
    default_code = "conflict"


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "request body too large"
    default_code = "too_large"


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "the room is unavailable, retry later"
    default_code = "unavailable"


# The error responses every operation documents (the schema lists them, and
# the schemathesis run checks no other status appears).
ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description='bad input: {"detail"} or per-field messages'),
    401: OpenApiResponse(ErrorSerializer, description="not authenticated"),
    403: OpenApiResponse(ErrorSerializer, description="not allowed"),
    404: OpenApiResponse(ErrorSerializer, description="not found (or not visible to you)"),
    413: OpenApiResponse(ErrorSerializer, description="request body too large"),
}

# Runtime refusal -> HTTP status. `internal` is the server's fault and the
# only 5xx: the commit failed or the room did not answer (retry, same key).
PUBLISH_STATUS: dict[type[publish.PublishError], int] = {
    publish.UnknownType: status.HTTP_400_BAD_REQUEST,
    publish.InvalidMessage: status.HTTP_400_BAD_REQUEST,
    publish.TooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    publish.Forbidden: status.HTTP_403_FORBIDDEN,
    publish.Unavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}

# Seconds a client should wait before retrying a 503.
RETRY_AFTER_SECONDS = 1


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    if isinstance(exc, UnknownKind):
        # A room whose kind was removed from DORM["KINDS"]: the room exists
        # but this server cannot interpret its log.
        exc = Conflict(f"this server has no room kind {exc}")
    if isinstance(exc, publish.PublishError):
        code = PUBLISH_STATUS.get(type(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
        body: dict[str, Any] = {"detail": exc.detail or exc.reason, "reason": exc.reason}
        response = Response(body, status=code)
        if code == status.HTTP_503_SERVICE_UNAVAILABLE:
            response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return drf_exception_handler(exc, context)
