"""Keep bearer tokens out of server logs that Dorm does not write itself.

uvicorn logs every WebSocket handshake at INFO with its query string
(``"WebSocket /ws/board?token=eyJ..." [accepted]``): the token would land in
the log. This filter rewrites such records before any handler sees them.
daphne logs paths without query strings and needs nothing.
"""

from __future__ import annotations

import logging
import re

TOKEN_IN_QUERY = re.compile(r"((?:^|[?&])token=)[^&\s\"']*")
# Loggers of ASGI servers that log handshake paths with their query string.
SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    return TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = redact(record.msg)
        if record.args:
            if isinstance(record.args, tuple):
                record.args = tuple(redact(a) if isinstance(a, str) and "token=" in a else a for a in record.args)
        return True


def install() -> None:
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
