"""Durable alarms end to end, in both modes, with real processes.

``celery``: a daphne server on PostgreSQL + Redis, and real ``celery -A
config worker`` and ``celery -A config beat`` subprocesses with Redis as the
broker (fails in CI when PostgreSQL or Redis is unreachable, skips on a
laptop). ``embedded``: the same tests against one daphne server on SQLite,
whose in-process scheduler calls the same dispatch function.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.alarm_stack import ALARM_REDIS_URL, CLAIM_SECONDS, RETRY_BASE_SECONDS, AlarmStack
from tests.e2e.client import WsClient, of_type, room_name
from tests.e2e.kinds import SECRET
from tests.e2e.server import HIBERNATE_AFTER_SECONDS
from tests.e2e.services import check_redis, fresh_postgres_database

pytestmark = [pytest.mark.e2e]

# ISSUE 4: "firing is within 1.5 s of the due time under normal load".
MAX_FIRING_DELAY_MS = 1500
# Every firing delay measured in the session, per mode (printed at the end).
DELAYS_MS: dict[str, list[int]] = {}


def _stack(mode: str, directory: Path) -> Iterator[AlarmStack]:
    if mode.startswith("embedded"):
        # "embedded-uvicorn": the scheduler starts from ASGI lifespan, not daphne's reactor.
        flavor = "uvicorn" if mode == "embedded-uvicorn" else "daphne"
        stack = AlarmStack("embedded", directory, flavor=flavor).start()
        try:
            yield stack
        finally:
            stack.stop()
        return
    check_redis(ALARM_REDIS_URL)
    with fresh_postgres_database() as url:
        stack = AlarmStack(mode, directory, url).start()
        try:
            yield stack
        finally:
            stack.stop()


@pytest.fixture(scope="module", params=["embedded", "celery"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlarmStack]:
    """One stack per mode for the tests that do not stop processes."""
    yield from _stack(request.param, tmp_path_factory.mktemp(f"alarms-{request.param}"))


@pytest.fixture
def uvicorn_stack(tmp_path: Path) -> Iterator[AlarmStack]:
    """The embedded mode under uvicorn: its scheduler starts from ASGI lifespan."""
    yield from _stack("embedded-uvicorn", tmp_path)


@pytest.fixture(scope="module", autouse=True)
def _report_delays() -> Iterator[None]:
    yield
    for mode, delays in DELAYS_MS.items():
        if delays:
            print(f"\nalarm firing delay ms ({mode}): n={len(delays)} min={min(delays)} max={max(delays)}")


def now_ms() -> int:
    return int(time.time() * 1000)


async def arm(stack: AlarmStack, room: str, in_ms: int, name: str = "", fail: int = 0) -> tuple[WsClient, int]:
    assert stack.server is not None
    ws = await WsClient.open(stack.server.url(room, userId="host"))
    at = now_ms() + in_ms
    reply = await ws.request("arm", {"atMs": at, "name": name, "fail": fail})
    assert reply["type"] == "ack", reply
    return ws, at


async def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def record_delay(stack: AlarmStack, delay_ms: int) -> None:
    DELAYS_MS.setdefault(stack.mode, []).append(delay_ms)
    assert -50 <= delay_ms <= MAX_FIRING_DELAY_MS, f"fired {delay_ms} ms after its due time"


async def test_alarm_fires_once_on_time_and_broadcasts_to_a_connected_client(stack: AlarmStack) -> None:
    room = room_name("alarm")
    ws, at = await arm(stack, room, 2000, "ping")
    try:
        rang = await ws.recv_until(lambda f: f.get("type") == "rang" and "seq" in f, timeout=2 + 5)
        record_delay(stack, rang["payload"]["at"] - at)
        assert rang["payload"]["name"] == "ping" and rang["userId"] == ""
        # Once: no second run, one durable effect, and the row is gone.
        await asyncio.sleep(1.5)
        assert len(ws.matching(of_type("attempt"))) == 1
        assert len(ws.matching(of_type("rang"))) == 1
        assert [r["name"] for r in stack.rang(room)] == ["ping"]
        assert stack.alarms(room) == []
    finally:
        await ws.close()


async def test_alarm_wakes_a_hibernated_room_with_no_clients(stack: AlarmStack) -> None:
    room = room_name("sleepy")
    # Due late enough that the room is asleep (and its lease free) before any
    # dispatcher claims the alarm (beat claims up to 2.5 s ahead).
    ws, at = await arm(stack, room, int((HIBERNATE_AFTER_SECONDS + 3.5) * 1000), "wake")
    await ws.close()
    # The room's actor goes to sleep before the alarm is due...
    await wait_until(lambda: any(run[1] for run in stack.runs(room)), HIBERNATE_AFTER_SECONDS + 3, "hibernation")
    assert stack.alarms(room)[0][4] is None, "not claimed before the room slept"
    assert now_ms() < at, "the room must be asleep before its alarm is due"
    assert not stack.rang(room)
    # ...and the alarm wakes it, runs, and its effect is in the database.
    await wait_until(lambda: bool(stack.rang(room)), 10, "the alarm's durable event")
    [rang] = stack.rang(room)
    record_delay(stack, rang["at"] - at)
    runs = stack.runs(room)
    assert len(runs) == 2, "a second actor run: the alarm woke the room"
    assert stack.alarms(room) == []
    if stack.mode == "celery":
        # Nobody owned the room: the worker took its lease and hosted the
        # actor, which then hibernated there as any other.
        assert stack.worker is not None and stack.worker.process is not None
        assert runs[1][2].endswith(f":{stack.worker.process.pid}"), runs
        await wait_until(lambda: stack.runs(room)[1][1] is not None, HIBERNATE_AFTER_SECONDS + 3, "sleep in the worker")


async def test_failing_handler_runs_three_times_with_growing_delays(stack: AlarmStack) -> None:
    room = room_name("retry")
    ws, at = await arm(stack, room, 1000, "flaky", fail=2)
    try:
        attempts = await ws.wait_for(of_type("attempt"), 3, timeout=15)
        await ws.recv_until(lambda f: f.get("type") == "rang" and "seq" in f, timeout=5)
        assert [a["payload"]["attempt"] for a in attempts] == [1, 2, 3]
        times = [a["payload"]["at"] for a in attempts]
        record_delay(stack, times[0] - at)
        first_gap, second_gap = times[1] - times[0], times[2] - times[1]
        base_ms = RETRY_BASE_SECONDS * 1000
        assert first_gap >= base_ms - 50 and second_gap >= 2 * base_ms - 50, (first_gap, second_gap)
        assert second_gap > first_gap * 1.4, f"delays must grow: {first_gap} ms then {second_gap} ms"
        [rang] = stack.rang(room)
        assert rang["attempt"] == 3
        assert stack.alarms(room) == []
        # The failure messages went to the admin's row, never to a log line.
        assert "planned failure" not in stack.logs() and SECRET not in stack.logs()
        assert "alarm failed room=" in stack.logs()
    finally:
        await ws.close()


async def test_alarm_due_while_the_dispatcher_is_down_fires_after_restart(stack: AlarmStack) -> None:
    """celery: the worker is killed (SIGKILL) after claiming the alarm, before it
    is due. embedded: the server itself is killed. Either way it fires once
    after the restart, when the dead process's claim has run out."""
    room = room_name("killed")
    # celery: further ahead than the server's own on-demand dispatch looks
    # when the alarm is set (2.5 s), so the worker is the one that claims it.
    ws, at = await arm(stack, room, 4000 if stack.mode == "celery" else 2500, "survivor")
    await ws.close()
    await wait_until(lambda: stack.alarms(room) and stack.alarms(room)[0][4] is not None, 5, "the claim")
    assert now_ms() < at
    stack.kill_dispatcher()
    await asyncio.sleep(max(0.0, (at - now_ms()) / 1000) + 0.5)
    assert not stack.rang(room), "nothing ran it while the dispatcher was down"
    stack.start_dispatcher()
    await wait_until(lambda: bool(stack.rang(room)), CLAIM_SECONDS + 10, "the alarm after the restart")
    await asyncio.sleep(1.0)
    assert [r["name"] for r in stack.rang(room)] == ["survivor"]
    assert stack.alarms(room) == []


async def test_alarms_set_before_a_restart_fire_after_it(stack: AlarmStack) -> None:
    """Nobody connects after the restart: the dispatcher starts with the process."""
    await restart_scenario(stack)


async def test_alarms_set_before_a_restart_fire_after_it_under_uvicorn(uvicorn_stack: AlarmStack) -> None:
    await restart_scenario(uvicorn_stack)


async def restart_scenario(stack: AlarmStack) -> None:
    """Two alarms set, every process restarted, nobody connects again: both
    fire once, on time if due after the restart, at once after it if they
    came due while everything was down (a slow machine)."""
    room = room_name("restart")
    ahead = 5000 if stack.mode == "celery" else 3000  # about the restart's length
    ws, at = await arm(stack, room, ahead, "a")
    second = now_ms() + ahead + 500
    assert (await ws.request("arm", {"atMs": second, "name": "b"}))["type"] == "ack"
    await ws.close()
    stack.restart_all()  # every process stops (SIGTERM) and starts again
    back = now_ms()
    await wait_until(lambda: len(stack.rang(room)) == 2, 10, "both alarms after the restart")
    await asyncio.sleep(0.5)
    by_name = {r["name"]: r for r in stack.rang(room)}
    assert sorted(by_name) == ["a", "b"] and len(stack.rang(room)) == 2, "each fired once"
    for name, due in (("a", at), ("b", second)):
        fired = by_name[name]["at"]
        assert fired >= due, f"{name} fired before its time"
        if due > back:
            record_delay(stack, fired - due)
        else:  # due during the restart: fired as soon as the dispatcher was back
            assert fired - back <= MAX_FIRING_DELAY_MS, f"{name} fired {fired - back} ms after the restart"
    assert stack.alarms(room) == []


@pytest.mark.parametrize("stack", ["celery"], indirect=True)  # leases: distributed mode only
async def test_a_room_busy_for_longer_than_its_lease_ttl_keeps_its_lease(stack: AlarmStack) -> None:
    """Regression: the lease renewal was never sent (an un-awaited script call),
    so a room's lease ran out under its running actor after the TTL."""
    import redis

    from tests.e2e.alarm_stack import LEASE_TTL_SECONDS

    room = room_name("lease")
    assert stack.server is not None
    ws = await WsClient.open(stack.server.url(room, userId="u"))
    client = redis.Redis.from_url(ALARM_REDIS_URL)
    try:
        owner = client.get(f"dorm:lease:{room}")
        assert owner is not None
        started = time.monotonic()
        while time.monotonic() - started < LEASE_TTL_SECONDS * 2:
            assert (await ws.request("disarm", {"name": "none"}))["type"] == "ack"
            assert client.get(f"dorm:lease:{room}") == owner, "the owner's lease must be renewed"
            await asyncio.sleep(0.2)
    finally:
        client.close()
        await ws.close()
