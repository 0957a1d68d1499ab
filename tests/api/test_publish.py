"""Publish through the room's actor: ordering, validation, output gate, idempotency.

Async tests: the REST call runs through the ASGI application on the test's
event loop, where the runtime fixture's actors live, as under daphne.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from rooms.models import Event, Room
from rooms.runtime import actor as actor_module
from tests.fixtures.api import asgi_request, token_client

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def make_room(slug: str, owner: Any, **fields: Any) -> Room:
    return Room.objects.create(slug=slug, owner=owner, **fields)


@database_sync_to_async
def log_of(slug: str) -> list[tuple[int, str, str]]:
    return list(Event.objects.filter(room__slug=slug).order_by("seq").values_list("seq", "type", "user_id"))


async def post(user: Any, slug: str, body: Any, **headers: str) -> Any:
    return await asgi_request(user, "POST", f"/api/rooms/{slug}/messages", body, headers)


async def test_publish_is_committed_broadcast_and_answered_with_its_seq(runtime: Any, connect: Any, owner: Any) -> None:
    await make_room("p", owner)
    watcher = await connect("p", userId="w")
    response = await post(owner, "p", {"type": "draw", "payload": {"x": 1}})
    assert response.status_code == 201, response.content
    assert response.json() == {"seq": 1, "id": None}
    event = await watcher.recv_type("draw")
    assert event["seq"] == 1 and event["userId"] == "app" and event["payload"] == {"x": 1}
    assert await log_of("p") == [(1, "draw", "app")]
    # On behalf of a user of the app.
    response = await post(owner, "p", {"type": "draw", "payload": {"x": 2}, "userId": "u7"})
    assert (await watcher.recv_type("draw"))["userId"] == "u7"


async def test_ephemeral_publish_is_broadcast_without_seq(runtime: Any, connect: Any, owner: Any) -> None:
    await make_room("eph", owner)
    watcher = await connect("eph", userId="w")
    response = await post(owner, "eph", {"type": "cursor", "payload": {"x": 1}})
    assert response.status_code == 201 and response.json()["seq"] is None
    assert "seq" not in await watcher.recv_type("cursor")
    assert await log_of("eph") == []


async def test_rest_and_websocket_messages_are_ordered_together(runtime: Any, connect: Any, owner: Any) -> None:
    await make_room("mix", owner)
    writer = await connect("mix", userId="ws")
    watcher = await connect("mix", userId="w")
    n = 20

    async def ws_traffic() -> list[int]:
        for i in range(n):
            await writer.send("draw", {"i": i}, id=f"w{i}")
        acks = [await writer.recv_type("ack") for _ in range(n)]
        return [a["seq"] for a in acks]

    async def rest_traffic() -> list[int]:
        responses = await asyncio.gather(*(post(owner, "mix", {"type": "draw", "payload": {"r": i}}) for i in range(n)))
        return [r.json()["seq"] for r in responses]

    ws_seqs, rest_seqs = await asyncio.gather(ws_traffic(), rest_traffic())
    assert sorted(ws_seqs + rest_seqs) == list(range(1, 2 * n + 1))
    seen = [await watcher.recv_type("draw") for _ in range(2 * n)]
    # The watcher sees one stream, gapless, in the order the log stored it.
    assert [e["seq"] for e in seen] == list(range(1, 2 * n + 1))
    log = await log_of("mix")
    assert [(e["seq"], e["userId"]) for e in seen] == [(s, u) for s, _, u in log]
    assert {e["seq"] for e in seen if e["userId"] == "app"} == set(rest_seqs)
    assert ws_seqs == sorted(ws_seqs)  # a socket's own messages keep their order


async def test_same_idempotency_key_is_applied_once(runtime: Any, connect: Any, owner: Any) -> None:
    await make_room("idem", owner)
    watcher = await connect("idem", userId="w")
    body = {"type": "draw", "payload": {"x": 1}}
    first, again = await asyncio.gather(post(owner, "idem", body, **{"Idempotency-Key": "k-1"}), post(owner, "idem", body, **{"Idempotency-Key": "k-1"}))
    later = await post(owner, "idem", body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == later.status_code == 201
    assert first.json() == again.json() == later.json() == {"seq": 1, "id": "k-1"}
    other = await post(owner, "idem", body, **{"Idempotency-Key": "k-2"})
    assert other.json()["seq"] == 2
    assert [e[0] for e in await log_of("idem")] == [1, 2]
    assert (await watcher.recv_type("draw"))["seq"] == 1
    assert (await watcher.recv_type("draw"))["seq"] == 2
    assert await watcher.nothing()


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"type": "nope"}, 400, "unknown_type"),
        ({"type": "draw", "payload": [1]}, 400, "invalid_message"),
        ({"type": "draw", "payload": {"x": 1e300}}, 400, "invalid_message"),
        ({"type": "erase", "payload": {"seq": 99}}, 400, "invalid_message"),  # the kind's check
        ({"type": "draw", "payload": {f"k{i}": "x" * 1000 for i in range(20)}}, 413, "too_large"),  # > 16 KiB
        ({"type": "restore", "payload": {"seq": 0, "state": {}}}, 403, "forbidden"),  # server-only type
    ],
)
async def test_refused_publishes_map_to_statuses_and_store_nothing(
    runtime: Any, connect: Any, owner: Any, body: dict[str, Any], status: int, reason: str
) -> None:
    await make_room("bad", owner)
    watcher = await connect("bad", userId="w")
    response = await post(owner, "bad", body)
    assert response.status_code == status, response.content
    assert response.json()["reason"] == reason and response.json()["detail"]
    assert await log_of("bad") == []
    assert await watcher.nothing()


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"type": "Draw"}, {}, 400),
        ({"payload": {}}, {}, 400),
        ({"type": "draw", "payload": {}, "userId": "u" * 129}, {}, 400),
        ({"type": "draw", "payload": {}}, {"Idempotency-Key": "k" * 65}, 400),
        ({"type": "draw", "payload": {"s": "x" * 70_000}}, {}, 413),  # over the frame limit
    ],
)
async def test_bad_publish_requests_never_reach_the_room(
    runtime: Any, owner: Any, body: dict[str, Any], headers: dict[str, str], status: int
) -> None:
    await make_room("req", owner)
    response = await post(owner, "req", body, **headers)
    assert response.status_code == status, response.content
    assert await log_of("req") == []


async def test_only_owner_and_staff_publish(runtime: Any, owner: Any, other: Any, staff: Any) -> None:
    await make_room("pub", owner)
    await make_room("priv", owner, private=True)
    assert (await post(other, "pub", {"type": "draw", "payload": {}})).status_code == 403
    assert (await post(other, "priv", {"type": "draw", "payload": {}})).status_code == 404
    assert (await post(staff, "priv", {"type": "draw", "payload": {}})).status_code == 201
    assert (await post(owner, "nope", {"type": "draw"})).status_code == 404


async def test_a_websocket_client_cannot_send_restore(runtime: Any, connect: Any, owner: Any) -> None:
    await make_room("ws", owner)
    client = await connect("ws", userId="u")
    await client.send("restore", {"seq": 0, "state": {}}, id="r1")
    assert await client.recv_type("error") == {"type": "error", "reason": "forbidden", "id": "r1"}


async def test_output_gate_a_failed_commit_is_503_and_nobody_sees_it(
    runtime: Any, connect: Any, owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_room("gate", owner)
    watcher = await connect("gate", userId="w")

    async def failing_commit(*args: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(actor_module, "db_commit_batch", failing_commit)
    response = await post(owner, "gate", {"type": "draw", "payload": {}}, **{"Idempotency-Key": "g"})
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json()["reason"] == "internal"
    assert await watcher.nothing()
    monkeypatch.undo()
    # The retry with the same key is applied (the failed one consumed nothing).
    retry = await post(owner, "gate", {"type": "draw", "payload": {}}, **{"Idempotency-Key": "g"})
    assert retry.json() == {"seq": 1, "id": "g"}
    assert (await watcher.recv_type("draw"))["seq"] == 1


def test_publish_without_an_asgi_server_is_503_not_a_crash(owner: Any) -> None:
    Room.objects.create(slug="wsgi", owner=owner)
    response = token_client(owner).post("/api/rooms/wsgi/messages", {"type": "draw", "payload": {}}, content_type="application/json")
    assert response.status_code == 503
    assert "ASGI" in response.json()["detail"]


async def test_over_the_rate_limit_is_429_with_retry_after(runtime: Any, owner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The limit itself is tested in tests/unit/test_limits.py; this makes it
    # answer "wait 1.5 s" to check the API's side of the contract.
    from rooms import limits

    async def wait_1500_ms(identity: Any, room: str) -> int:
        return 1500

    monkeypatch.setattr(limits, "admit_message", wait_1500_ms)
    await make_room("rl", owner)
    response = await post(owner, "rl", {"type": "draw", "payload": {}})
    assert response.status_code == 429 and response["Retry-After"] == "2"
    assert "detail" in response.json()
    assert await log_of("rl") == []


async def test_publish_logs_carry_metadata_never_payloads(runtime: Any, owner: Any, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG, logger="dorm")
    await make_room("logs", owner)
    ok = await post(owner, "logs", {"type": "draw", "payload": {"note": "SECRET-PAYLOAD"}})
    refused = await post(owner, "logs", {"type": "draw", "payload": {"note": "SECRET-PAYLOAD", "n": 1e300}})
    assert (ok.status_code, refused.status_code) == (201, 400)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "publish room=logs user=app type=draw seq=1" in text
    assert "publish refused room=logs" in text
    assert "SECRET-PAYLOAD" not in text
