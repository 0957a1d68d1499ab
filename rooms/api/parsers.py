"""The API's one request body type: JSON, with a size cap.

DRF parses from the request stream, which Django's DATA_UPLOAD_MAX_MEMORY_SIZE
does not guard (only ``request.body`` and ``request.POST`` do), so without a
cap here a multi-megabyte body would be parsed in full. Over the cap: 413.
"""

from __future__ import annotations

import io
from typing import Any

from rest_framework import parsers

from rooms.api.errors import PayloadTooLarge
from rooms.conf import dorm_settings


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        limit = dorm_settings.HARD_FRAME_LIMIT_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        return super().parse(io.BytesIO(raw), media_type, parser_context)
