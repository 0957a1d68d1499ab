"""A cancel is never lost in `asyncio.wait_for`, so tasks that talk to Redis stop.

Python 3.11's `wait_for` returned the inner result and dropped the cancel when
both landed in one loop step (rooms/runtime/asyncio_fixes.py); redis-py sends
every command through it. These tests fail with the fix not installed.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from rooms.runtime import asyncio_fixes


async def ends_cancelled(task: asyncio.Task[object]) -> bool:
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    if not done:  # the cancel was lost: stop the loop by other means
        return False
    return task.cancelled()


def test_the_fix_is_installed_when_django_starts() -> None:
    assert asyncio.wait_for is asyncio_fixes.wait_for


async def test_a_cancel_landing_with_the_inner_result_propagates() -> None:
    async def quick() -> int:
        return 1

    async def waits_then_sleeps() -> None:
        await asyncio.wait_for(quick(), 5)
        await asyncio.sleep(10)  # reached only if the cancel was swallowed

    task = asyncio.create_task(waits_then_sleeps())
    await asyncio.sleep(0)  # the task now waits; its inner finishes in the next step
    assert await ends_cancelled(task)


async def test_wait_for_still_times_out_and_returns() -> None:
    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow(), 0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow(), 0)
    assert await asyncio.wait_for(asyncio.sleep(0, "x"), 1) == "x"
    assert await asyncio.wait_for(asyncio.sleep(0, "y"), None) == "y"


async def test_cancelling_a_task_that_sends_redis_commands_always_stops_it(redis_url: str, redis_prefix: str) -> None:
    # Configured like Dorm's clients: a socket timeout puts each send in wait_for.
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    running = True

    async def sends() -> None:
        while running:
            await client.zadd(f"{redis_prefix}z", {"a": 1})

    lost = 0
    try:
        for _ in range(100):
            task = asyncio.create_task(sends())
            await asyncio.sleep(random.random() * 0.002)
            if not await ends_cancelled(task):
                lost += 1
                running = False
                await asyncio.wait([task], timeout=1.0)
                running = True
    finally:
        await client.aclose()
    assert lost == 0, f"{lost} of 100 cancels were lost"
