"""Cursor pagination of a room's history by ``seq`` (PROTOCOL.md section 6).

``since=N`` pages forward (seq > N, ascending); ``before=N`` pages backward
(seq < N, newest first). The cursor is a seq, not an offset: offsets shift
when events are appended between two pages, a seq never does.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from rooms.api.history import Query
from rooms.protocol import MESSAGE_TYPE_RE, MAX_USER_ID_CHARS

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Seqs are BIGINT; a larger cursor is bad input, not a database overflow.
MAX_SEQ = 2**63 - 1


class HistoryParams(serializers.Serializer):
    since = serializers.IntegerField(required=False, min_value=0, max_value=MAX_SEQ)
    before = serializers.IntegerField(required=False, min_value=1, max_value=MAX_SEQ)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, default=DEFAULT_LIMIT)
    type = serializers.RegexField(rf"^{MESSAGE_TYPE_RE.pattern}\Z", max_length=32, required=False, help_text="only events of this type")
    user = serializers.CharField(required=False, max_length=MAX_USER_ID_CHARS, trim_whitespace=False, help_text="only events of this userId")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "since" in attrs and "before" in attrs:
            raise serializers.ValidationError("give since or before, not both")
        return attrs


class SeqCursorPagination(BasePagination):
    def parse(self, request: Request) -> Query:
        params = HistoryParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        return Query(
            since=data.get("since"),
            before=data.get("before"),
            limit=data["limit"],
            type=data.get("type"),
            user=data.get("user"),
        )

    def next_link(self, request: Request, query: Query, results: list[dict[str, Any]]) -> str | None:
        """The next page's URL, or None when this page ended the log (for now)."""
        if len(results) < query.limit:
            return None
        url = request.build_absolute_uri()
        if query.before is not None:
            oldest = results[-1]["seq"]
            return None if oldest <= 1 else replace_query_param(url, "before", oldest)
        return replace_query_param(url, "since", results[-1]["seq"])

    def response(self, request: Request, query: Query, results: list[dict[str, Any]]) -> Response:
        return Response({"next": self.next_link(request, query, results), "results": results})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["next", "results"],
            "properties": {
                "next": {
                    "type": "string",
                    "nullable": True,
                    "format": "uri",
                    "description": "the next page (since/before moved past this page); null when this page was not full",
                },
                "results": schema,
            },
        }
