"""A room runtime inside a Celery worker process.

Celery tasks are synchronous; room actors live on an event loop. The worker
keeps one loop in a background thread with one :class:`Runtime` on it, made
on first use, for the life of the process. In the distributed mode that
runtime is a full cluster member (its own inbox and leases): an alarm for a
room another process owns is forwarded to that owner; an alarm for a room
nobody owns makes this worker take the lease and run the actor here, which
then hibernates like any other once idle (its events reach the room's sockets
on the servers through the room bus, and frames sent meanwhile are forwarded
here by the servers).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from rooms.runtime.dispatch import Dispatcher

log = logging.getLogger("dorm.alarms")

T = TypeVar("T")

# How long a task waits for the loop to do its part (claims are quick).
CALL_TIMEOUT_SECONDS = 30.0


class WorkerHost:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="dorm-actors", daemon=True)
        self.thread.start()
        self.runtime = self.call(self._make_runtime())
        self.dispatcher = Dispatcher(self.runtime)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _make_runtime(self) -> Any:
        from rooms.runtime.registry import get_runtime

        return get_runtime()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_SECONDS) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def dispatch(self, lookahead_seconds: float) -> int:
        return self.call(self.dispatcher.dispatch(lookahead_seconds))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Give back claimed alarms and hand hosted rooms over (snapshot,
        release leases) before the process exits."""
        try:
            self.call(self.dispatcher.stop(), timeout)
            self.call(self.runtime.shutdown(timeout), timeout + 5)
        except Exception as exc:
            log.warning("worker runtime shutdown failed error=%s", type(exc).__name__)


_host: WorkerHost | None = None
_lock = threading.Lock()


def worker_host() -> WorkerHost:
    global _host
    with _lock:
        if _host is None:
            _host = WorkerHost()
        return _host


def shutdown_worker_host() -> None:
    global _host
    with _lock:
        host, _host = _host, None
    if host is not None:
        host.shutdown()
