"""Measure: N sleeping rooms with alarms due at one instant; firing delays.

Not a test (slow, load-sensitive): ``python -m tests.e2e.alarm_burst embedded 200``
or ``... celery 200`` (needs the PostgreSQL and Redis of the e2e tests).
Prints p50/p95/max of (handler start - due time) in ms.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from tests.e2e.alarm_stack import AlarmStack
from tests.e2e.client import WsClient
from tests.e2e.services import fresh_postgres_database

# Setting the alarms takes a while (one connection per room); they are all
# due this long after the first is set.
DUE_AFTER_MS = 25_000


async def run(stack: AlarmStack, n: int) -> None:
    assert stack.server is not None
    rooms = [f"burst-{secrets.token_hex(6)}" for _ in range(n)]
    due = int(time.time() * 1000) + DUE_AFTER_MS
    for room in rooms:
        ws = await WsClient.open(stack.server.url(room, userId="h"))
        assert (await ws.request("arm", {"atMs": due, "name": "b"}))["type"] == "ack"
        await ws.close()
    left = (due - time.time() * 1000) / 1000
    assert left > 5, "setting the alarms took too long: raise DUE_AFTER_MS"
    deadline = time.time() + left + 30
    rows: list[tuple[str]] = []
    while time.time() < deadline:
        rows = stack.query("SELECT payload FROM rooms_event WHERE type = 'rang'")  # type: ignore[assignment]
        if len(rows) >= n:
            break
        await asyncio.sleep(0.5)
    delays = sorted(orjson.loads(r[0])["at"] - due for r in rows)
    p95 = delays[max(0, int(len(delays) * 0.95) - 1)]
    print(f"{stack.mode}: n={len(delays)} p50={statistics.median(delays):.0f} ms p95={p95} ms max={delays[-1]} ms")


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    directory = Path(tempfile.mkdtemp(prefix=f"dorm-burst-{mode}-"))
    if mode == "celery":
        with fresh_postgres_database() as url:
            stack = AlarmStack("celery", directory, url).start()
            try:
                asyncio.run(run(stack, n))
            finally:
                stack.stop()
    else:
        stack = AlarmStack("embedded", directory).start()
        try:
            asyncio.run(run(stack, n))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
