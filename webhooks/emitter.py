"""From room signals to webhook deliveries, without ever blocking a room.

The actor sends signals on its event loop; these receivers only hand work to
one background thread (``dispatch.enqueue``: find the endpoints, record the
deliveries, queue the Celery tasks), so a slow database or broker never
delays a frame. ``event.durable`` is throttled per room: the first commit
opens a window of ``WEBHOOK_DURABLE_THROTTLE_SECONDS`` and one webhook covers
every seq committed in it (``firstSeq``..``lastSeq``).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rooms import signals
from rooms.conf import dorm_settings

log = logging.getLogger("dorm.webhooks")

# One thread: deliveries of a room are recorded in the order things happened.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dorm-webhooks")
# room -> [first_seq, last_seq] of the open throttle window.
_durable_windows: dict[str, list[int]] = {}


def _enqueue(event: str, room: str, data: dict[str, Any]) -> list[int]:
    from django.db import close_old_connections

    from webhooks import dispatch

    # This thread's connection outlives any request: one the database dropped
    # (a restart, a failover, a reset) must be replaced, not reused forever.
    close_old_connections()
    try:
        return dispatch.enqueue(event, room, data)
    finally:
        close_old_connections()


def _submit(event: str, room: str, data: dict[str, Any]) -> None:
    future = _executor.submit(_enqueue, event, room, data)
    future.add_done_callback(_log_failure)


def _log_failure(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("webhook enqueue failed error=%s", type(exc).__name__, exc_info=exc)


def _on_user_joined(sender: Any, *, room: str, user_id: str, **kwargs: Any) -> None:
    if dorm_settings.WEBHOOKS:
        _submit("user.joined", room, {"userId": user_id})


def _on_user_left(sender: Any, *, room: str, user_id: str, **kwargs: Any) -> None:
    if dorm_settings.WEBHOOKS:
        _submit("user.left", room, {"userId": user_id})


def _on_room_occupied(sender: Any, *, room: str, **kwargs: Any) -> None:
    if dorm_settings.WEBHOOKS:
        _submit("room.occupied", room, {})


def _on_room_vacated(sender: Any, *, room: str, **kwargs: Any) -> None:
    if dorm_settings.WEBHOOKS:
        _submit("room.vacated", room, {})


def _on_events_durable(sender: Any, *, room: str, first_seq: int, last_seq: int, **kwargs: Any) -> None:
    if not dorm_settings.WEBHOOKS:
        return
    window = _durable_windows.get(room)
    if window is not None:
        window[1] = last_seq
        return
    _durable_windows[room] = [first_seq, last_seq]
    asyncio.get_running_loop().call_later(dorm_settings.WEBHOOK_DURABLE_THROTTLE_SECONDS, _close_window, room)


def _close_window(room: str) -> None:
    first, last = _durable_windows.pop(room)
    _submit("event.durable", room, {"firstSeq": first, "lastSeq": last})


def connect() -> None:
    signals.user_joined.connect(_on_user_joined, dispatch_uid="webhooks.user_joined")
    signals.user_left.connect(_on_user_left, dispatch_uid="webhooks.user_left")
    signals.room_occupied.connect(_on_room_occupied, dispatch_uid="webhooks.room_occupied")
    signals.room_vacated.connect(_on_room_vacated, dispatch_uid="webhooks.room_vacated")
    signals.events_durable.connect(_on_events_durable, dispatch_uid="webhooks.events_durable")
