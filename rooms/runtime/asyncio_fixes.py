"""Python 3.11's ``asyncio.wait_for`` can swallow a cancellation; 3.12's cannot.

In 3.11, when a task is cancelled while it waits in ``wait_for`` and the inner
awaitable finishes in the same loop step, ``wait_for`` returns the inner result
and the ``CancelledError`` is lost (CPython gh-86296, fixed in 3.12 by
rewriting ``wait_for`` on top of ``asyncio.timeout``). redis-py wraps every
command it sends in ``wait_for`` when a socket timeout is set, which Dorm's
Redis clients all do, so cancelling a task that talks to Redis was lost about
two times in three (measured: 199 of 300 cancels of a task sending PINGs).
A renewal loop whose cancel is lost runs on, and whoever awaits it hangs: that
was the one-off hang in ``tests/unit/test_limits.py``.

``install()`` puts 3.12's ``wait_for`` in place on older Pythons, for every
library in the process (redis-py, channels-redis, ours).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Awaitable, TypeVar

T = TypeVar("T")

_original_wait_for = asyncio.wait_for


async def wait_for(fut: Awaitable[T], timeout: float | None) -> T:
    """3.12's ``asyncio.wait_for``: a cancel from outside always propagates."""
    if timeout is not None and timeout <= 0:
        # Same as 3.11 and 3.12: run what is already done, else time out now.
        return await _original_wait_for(fut, timeout)
    async with asyncio.timeout(timeout):
        return await fut


def install() -> None:
    if sys.version_info >= (3, 12) or asyncio.wait_for is wait_for:
        return
    asyncio.wait_for = wait_for  # type: ignore[assignment]
    asyncio.tasks.wait_for = wait_for  # type: ignore[assignment]

