"""Presence updates of a room, coalesced under churn.

At most one presence update per room per window: ``PRESENCE_COALESCE_MS``
(100 ms), or longer in a big room (below). The first change after a quiet
window goes out at once (a lone join costs no latency); changes inside the
window wait for its end and go out together as the *net* change per user (a
user who joined and left inside the window is not mentioned at all).

Each update goes to every connection of the room, so with a fixed window a
room's presence traffic grows with its size: 10 updates a second to 5,000
members is 50,000 sends a second, most of what one process can do, and in a
join storm each join made the next slower (``bench/suite.py --workloads
storm``: 210 joins/s from 2,500 to 5,000 members, 147 frames sent per join,
3.9 ms of server CPU each). So the window is also at least ``audience /
PRESENCE_FANOUT_PER_SECOND``: a room's presence updates reach at most that
many sockets a second (2,000: 100 ms up to 200 connections, 0.5 s at 1,000,
2.5 s at 5,000), whatever its size and churn (the same storm: 494 joins/s,
4.7 frames, 1.9 ms).

The process has a budget too, ``PRESENCE_PROCESS_FANOUT_PER_SECOND``,
shared by the rooms whose presence is churning now: a room's window is also
at least the connections of all those rooms / the budget. Without it, a
process whose clients all come back at once (a deploy, a network blip)
spent its core announcing joins in hundreds of rooms while the rest waited
to connect:
10,000 joins into 200 rooms slowed to ~910 joins/s as the rooms filled, 37
frames received per join and 1.07 ms of server CPU; with the budget
1,580-1,670 joins/s, 4.2 frames and 0.6 ms (``bench/suite.py --workloads
storm --storm-rooms 200``). A lone room, or a few, keep their windows.

A flush with one change sends the classic frame (``user_joined``,
``user_left`` or ``presence``), so quiet rooms look exactly as PROTOCOL.md
shows them to clients that know nothing else. A flush with more sends one
``presence_diff`` frame (a new type, PROTOCOL.md's way to extend)::

    {"type": "presence_diff", "joined": [{"userId", "connectionId", "at"}],
     "left": [{"userId", "connectionId", "code", "reason"}],
     "status": [{"userId", "status"}], "ts": ...}

Clients apply it as set operations (idempotent): a joining client's welcome
may already include users the next diff mentions. The full list is always in
``welcome`` and at ``GET /api/rooms/<room>/presence``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rooms.conf import dorm_settings
from rooms.protocol import dumps, now_ms
from rooms.runtime.transport import Transport

log = logging.getLogger("dorm.presence")

# A user's presence in the room: here and fresh, here but silent, or gone.
State = Literal["here", "offline", "gone"]


@dataclass(slots=True)
class _Change:
    before: State
    after: State
    connection_id: str
    at: int = 0
    code: int = 1000
    reason: str = ""
    status: str = "online"
    extra: dict[str, Any] = field(default_factory=dict)


class ChurningRooms:
    """The rooms of this process whose presence went out lately, with the
    connections their updates reach: each counts for a second after its
    flush, or for its window if that is longer (a room with a 5 s window
    churns between its flushes too).

    Kept in the order of their last flush, so the expired ones are at the
    front (a room with a long window may shield later ones for a while: the
    sum errs high, which only widens windows)."""

    def __init__(self) -> None:
        self._rooms: OrderedDict[str, tuple[float, int]] = OrderedDict()  # room -> (counts until, audience)
        self._audience = 0

    def flushed(self, room: str, now: float, window: float, audience: int) -> None:
        before = self._rooms.pop(room, None)  # and back in at the end
        if before is not None:
            self._audience -= before[1]
        self._rooms[room] = (now + max(1.0, window), audience)
        self._audience += audience

    def total(self, now: float) -> int:
        """The connections the churning rooms' updates reach (/metrics:
        ``dorm_process_presence_churning_connections``)."""
        rooms = self._rooms
        while rooms:
            first, (until, reached) = next(iter(rooms.items()))
            if until >= now:
                break
            del rooms[first]
            self._audience -= reached
        return self._audience

    def audience(self, now: float, room: str, audience: int) -> int:
        """``total``, with ``room`` (about to send, to ``audience``
        connections) among them."""
        total = self.total(now)
        mine = self._rooms.get(room)
        return total - (mine[1] if mine is not None else 0) + audience

    def clear(self) -> None:
        self._rooms.clear()
        self._audience = 0


# One per process: the budget is the process's.
churning = ChurningRooms()


class PresenceCoalescer:
    """One per room actor; ``flush`` before the actor sleeps."""

    def __init__(self, room: str, transport: Transport, audience: Callable[[], int] = lambda: 0) -> None:
        self.room = room
        self.transport = transport
        # How many connections an update reaches now (the actor's roster).
        self.audience = audience
        self._pending: dict[str, _Change] = {}
        self._last_flush = 0.0  # monotonic
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        # Counters for tests and the benchmark: frames sent, changes folded in.
        self.frames_sent = 0
        self.changes_seen = 0

    async def joined(self, user_id: str, connection_id: str, *, was: State = "gone") -> None:
        await self._add(user_id, was, "here", connection_id, at=now_ms())

    async def left(self, user_id: str, connection_id: str, code: int, reason: str, *, was: State = "here") -> None:
        await self._add(user_id, was, "gone", connection_id, code=code, reason=reason)

    async def offline(self, user_id: str, connection_id: str) -> None:
        await self._add(user_id, "here", "offline", connection_id, status="offline")

    async def online(self, user_id: str, connection_id: str, status: str) -> None:
        await self._add(user_id, "offline", "here", connection_id, status=status)

    async def _add(self, user_id: str, before: State, after: State, connection_id: str, **details: Any) -> None:
        self.changes_seen += 1
        prior = self._pending.get(user_id)
        change = _Change(prior.before if prior else before, after, connection_id, **details)
        self._pending[user_id] = change
        window = self.window()
        now = time.monotonic()
        if self._timer is None and self._task is None and now - self._last_flush >= window:
            await self.flush()
            return
        if self._timer is None:
            delay = max(0.0, self._last_flush + window - now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def window(self) -> float:
        """The room's window now, in seconds: wide enough that its updates
        reach at most ``PRESENCE_FANOUT_PER_SECOND`` sockets a second, and
        the process's churning rooms together at most
        ``PRESENCE_PROCESS_FANOUT_PER_SECOND``: then all of them have the
        same window, their connections together / that budget (a fair share
        per room instead would give one room of 5,000 among 200 small ones
        a 100 s window)."""
        window = dorm_settings.PRESENCE_COALESCE_MS / 1000
        room_budget = dorm_settings.PRESENCE_FANOUT_PER_SECOND
        process_budget = dorm_settings.PRESENCE_PROCESS_FANOUT_PER_SECOND
        if room_budget > 0 or process_budget > 0:
            audience = self.audience()
            if room_budget > 0:
                window = max(window, audience / room_budget)
            if process_budget > 0:
                window = max(window, churning.audience(time.monotonic(), self.room, audience) / process_budget)
        return window

    def _on_timer(self) -> None:
        self._timer = None
        self._task = asyncio.ensure_future(self._flush_task())

    async def _flush_task(self) -> None:
        try:
            await self.flush()
        except Exception:
            log.exception("presence flush failed room=%s", self.room)
        finally:
            self._task = None

    async def flush(self) -> None:
        """Send what is pending now (the window's end, or the actor going to sleep)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        self._last_flush = time.monotonic()
        changes = [(user, c) for user, c in pending.items() if c.before != c.after]
        if not changes:
            return
        churning.flushed(self.room, self._last_flush, self.window(), self.audience())
        self.frames_sent += 1
        if len(changes) == 1:
            user_id, c = changes[0]
            await self.transport.broadcast(self.room, dumps(_classic(user_id, c)), None, c.connection_id)
            return
        diff: dict[str, Any] = {"type": "presence_diff", "joined": [], "left": [], "status": [], "ts": now_ms()}
        for user_id, c in changes:
            if c.after == "gone":
                diff["left"].append({"userId": user_id, "connectionId": c.connection_id, "code": c.code, "reason": c.reason})
            elif c.before == "gone":
                diff["joined"].append({"userId": user_id, "connectionId": c.connection_id, "at": c.at or now_ms()})
            else:
                diff["status"].append({"userId": user_id, "status": c.status})
        await self.transport.broadcast(self.room, dumps(diff), None, None)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _classic(user_id: str, c: _Change) -> dict[str, Any]:
    if c.after == "gone":
        return {"type": "user_left", "userId": user_id, "connectionId": c.connection_id, "code": c.code, "reason": c.reason}
    if c.before == "gone":
        return {"type": "user_joined", "userId": user_id, "connectionId": c.connection_id, "at": c.at or now_ms()}
    return {"type": "presence", "userId": user_id, "payload": {"status": c.status}, "ts": now_ms()}
