"""Webhooks end to end: real daphne, real Celery worker on Redis, a local
HTTP receiver; signatures verified, a failing endpoint retried."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.fixtures.receiver import Receiver
from tests.fixtures.servers import CLOSE_TIMEOUT_SECONDS, ROOT, Server, start_daphne, stop
from webhooks import signing


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Server]:
    """daphne + a Celery worker on one SQLite file and one Redis database."""
    env = {
        "CELERY_BROKER_URL": redis_url,
        "DORM_WEBHOOK_BACKOFF_SECONDS": "0.3",
        "DORM_WEBHOOK_DURABLE_THROTTLE_SECONDS": "0.3",
    }
    proc, server = start_daphne(tmp_path, env)
    worker_log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo", "-l", "info",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=server.env, stdout=open(worker_log, "wb"), stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while b" ready." not in worker_log.read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("celery worker did not start:\n" + worker_log.read_text()[-3000:])
            time.sleep(0.1)
        yield server
    finally:
        stop(worker)
        stop(proc)


def register(server: Server, receiver: Receiver) -> dict[str, str]:
    """Two endpoints: app-wide for all events, and a flaky one for event.durable of the room."""
    code = f"""
import json
from django.contrib.auth import get_user_model
from rooms.models import Room
from webhooks.models import Endpoint, EVENT_TYPES
ops = get_user_model().objects.get(username="ops")
wide = Endpoint.objects.create(owner=ops, url="{receiver.url}/ok", events=EVENT_TYPES)
flaky = Endpoint.objects.create(owner=ops, room=Room.objects.get(slug="hooked"), url="{receiver.url}/flaky", events=["event.durable"])
print(json.dumps({{"/ok": wide.secret, "/flaky": flaky.secret}}))
"""
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=server.env, check=True, capture_output=True)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


async def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_webhooks_are_signed_delivered_and_retried(stack: Server, receiver: Receiver) -> None:
    server = stack
    status, _ = await asyncio.to_thread(server.request, "POST", "/api/rooms/", {"slug": "hooked"})
    assert status == 201
    secrets = await asyncio.to_thread(register, server, receiver)

    async with websockets.connect(f"{server.ws}/ws/hooked?userId=u1", close_timeout=CLOSE_TIMEOUT_SECONDS) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        for i in range(3):
            await ws.send(json.dumps({"type": "draw", "id": f"d{i}", "payload": {"i": i}}))
        acks = 0
        while acks < 3:
            acks += json.loads(await ws.recv())["type"] == "ack"
    expected = {"room.occupied", "user.joined", "event.durable", "user.left", "room.vacated"}
    await wait_for(lambda: {b["type"] for b in receiver.bodies("/ok")} >= expected)
    await wait_for(lambda: len(receiver.bodies("/flaky")) >= 2)

    now = int(time.time())
    for path, headers, body in receiver.requests:
        assert signing.verify(secrets[path], body, headers[signing.HEADER], now), (path, headers)
        assert not signing.verify(secrets[path], body + b" ", headers[signing.HEADER], now)
    ok = receiver.bodies("/ok")
    assert all(b["room"] == "hooked" for b in ok)
    assert {b["type"]: b["data"] for b in ok if b["type"] in ("user.joined", "user.left")} == {
        "user.joined": {"userId": "u1"}, "user.left": {"userId": "u1"},
    }
    # Throttled: the three commits came inside one window, so one webhook covers them.
    durable = [b["data"] for b in ok if b["type"] == "event.durable"]
    assert durable == [{"firstSeq": 1, "lastSeq": 3}]
    assert [b["type"] for b in ok].index("room.occupied") < [b["type"] for b in ok].index("room.vacated")

    # The flaky endpoint got the same delivery twice: 500, then 200 after the backoff.
    flaky = [(h["Dorm-Delivery"], body) for p, h, body in receiver.requests if p == "/flaky"]
    assert len(flaky) == 2 and flaky[0] == flaky[1]

    def flaky_rows() -> list[tuple[Any, ...]]:
        with sqlite3.connect(server.env["SQLITE_PATH"]) as db:
            return db.execute(
                "SELECT d.event, d.status, d.attempts, d.last_status_code FROM webhooks_delivery d "
                "JOIN webhooks_endpoint e ON e.id = d.endpoint_id WHERE e.url LIKE '%/flaky'"
            ).fetchall()

    # The worker records the outcome after the receiver has answered: the
    # second request can be seen here before its row says so.
    await wait_for(lambda: flaky_rows() != [("event.durable", "pending", 1, 500)], timeout=10)
    assert flaky_rows() == [("event.durable", "succeeded", 2, 200)]


def test_signature_helpers_round_trip() -> None:
    header = signing.sign("s3cret", b"{}", 1000)
    assert signing.verify("s3cret", b"{}", header, 1000)
    assert not signing.verify("other", b"{}", header, 1000)
    assert not signing.verify("s3cret", b"{}", header, 1000 + signing.DEFAULT_TOLERANCE_SECONDS + 1)
    assert not signing.verify("s3cret", b"{}", "garbage", 1000)
