"""Each connection's queue of ASGI messages for the application: one
slotted object instead of an ``asyncio.Queue`` (``rooms/daphne_server.py``
and ``rooms/uvicorn_server.py`` give it to their servers' protocols)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class ApplicationQueue:
    """What the servers' protocols and the application use of the
    ``asyncio.Queue`` daphne and uvicorn give each connection
    (``put_nowait``, ``get``, ``empty``), without its cost: an
    ``asyncio.Queue`` is ~3.2 KB (three deques and an ``Event``), held by
    every idle socket for its whole life; this is one slotted object, with a
    deque only while messages wait.

    As in ``asyncio.Queue``, a message stays queued until a getter takes it:
    a getter cancelled after it was woken loses nothing.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def qsize(self) -> int:
        return 0 if self._items is None else len(self._items)

    def empty(self) -> bool:
        return not self._items

    def awaited_empty(self) -> bool:
        """A getter waits and nothing is queued: the reader (one task) has
        nothing of this queue in hand."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter
            if waiter is None or waiter.done():
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        items = self._items
        item = items.popleft()
        if not items:
            self._items = None
        return item
