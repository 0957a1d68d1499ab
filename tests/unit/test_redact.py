"""The filter that keeps `?token=` out of ASGI servers' own log lines."""

from __future__ import annotations

import logging

import pytest

from rooms.redact import RedactTokens, redact


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/ws/r?token=eyJa.b.c", "/ws/r?token=[redacted]"),
        ("/ws/r?token=eyJa.b.c&since=4", "/ws/r?token=[redacted]&since=4"),
        ("/ws/r?since=4&token=eyJa.b.c", "/ws/r?since=4&token=[redacted]"),
        ('"WebSocket /ws/r?token=abc" [accepted]', '"WebSocket /ws/r?token=[redacted]" [accepted]'),
        ("/ws/r?mytoken=abc", "/ws/r?mytoken=abc"),
        ("/ws/r?userId=u", "/ws/r?userId=u"),
    ],
)
def test_redact(line: str, expected: str) -> None:
    assert redact(line) == expected


def test_the_filter_rewrites_args_and_message() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s"', ("1.2.3.4", "/ws/r?token=SECRET"), None)
    assert RedactTokens().filter(record)
    assert "SECRET" not in record.getMessage()
    assert logging.getLogger("uvicorn.error").filters, "installed by RoomsConfig.ready()"
