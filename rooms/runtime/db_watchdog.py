"""A deadline on database work of Django's database thread.

The actors' group commits, loads and snapshots run on Django's single
database thread (``database_sync_to_async``). A database that stops
answering (a frozen PostgreSQL host, a black-holed network, another process
holding SQLite's write lock) would block that call, and every call queued
behind it, forever: psycopg has no client-side query timeout.

:func:`guarded` wraps a synchronous function like ``database_sync_to_async``
does, and arms a deadline (``DORM_DB_TIMEOUT_SECONDS``) around the call, the
connection checks before and after it included. One watchdog thread looks
at the armed deadlines every 50 ms; when one expires it aborts the blocked
call from outside:

- PostgreSQL: it shuts the connection's socket down (``shutdown(SHUT_RDWR)``
  on a duplicate of its descriptor), so the blocked ``recv`` returns and
  psycopg raises ``OperationalError``; the connection is closed and the next
  call opens a new one (bounded by libpq's ``connect_timeout``, set in
  settings).
- SQLite: ``interrupt()`` stops a running statement; a wait for another
  process's write lock does not look at it, so the lock wait
  (``busy_timeout``) is shortened to the deadline for the call.

The call then raises :class:`DatabaseTimeout`. An aborted ``COMMIT`` is in
doubt (it may have reached the disk): the actor finds out by reading the log
when it reloads (docs/runtime.md, "Database outage").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync, sync_to_async
from channels.db import DatabaseSyncToAsync
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, close_old_connections, connections

from rooms.conf import dorm_settings

log = logging.getLogger("dorm.db")

# How often the watchdog thread looks at the armed deadlines (while any are:
# with none armed it parks until the next call).
CHECK_INTERVAL_SECONDS = 0.05


class DatabaseTimeout(OperationalError):
    """A database call ran past its deadline and was aborted."""


def is_unavailable(exc: BaseException) -> bool:
    """The error says the database cannot be reached (or did not answer in time),
    as opposed to refusing this one statement (an integrity error)."""
    return isinstance(exc, (OperationalError, InterfaceError))


class Deadline:
    __slots__ = ("expires", "wrapper", "fired")

    def __init__(self, expires: float, wrapper: Any) -> None:
        self.expires = expires
        self.wrapper = wrapper
        self.fired = False

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.expires


class Watchdog:
    def __init__(self) -> None:
        self._armed: dict[int, Deadline] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Set while the thread polls; clear while it is parked because
        # nothing is armed (an idle server's thread then never wakes).
        self._polling = threading.Event()
        self._polling.set()
        self.fired = 0  # how many calls it aborted (tests, logs)
        self.parks = 0  # how often it parked (tests)

    def arm(self, timeout: float, wrapper: Any) -> Deadline:
        entry = Deadline(time.monotonic() + timeout, wrapper)
        with self._lock:
            self._armed[id(entry)] = entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dorm-db-watchdog", daemon=True)
                self._thread.start()
        if not self._polling.is_set():  # a plain read while the thread polls (under load)
            self._polling.set()
        return entry

    def disarm(self, entry: Deadline) -> None:
        with self._lock:
            self._armed.pop(id(entry), None)

    def _park_while_idle(self) -> None:
        """Wait, without waking, until a call is armed. Cleared before the
        second look: an ``arm`` after that look sets it again, so no call is
        missed."""
        if self._armed:
            return
        self._polling.clear()
        if not self._armed:
            self.parks += 1
            self._polling.wait()
        self._polling.set()

    def _run(self) -> None:
        while True:
            self._park_while_idle()
            time.sleep(CHECK_INTERVAL_SECONDS)
            if not self._armed:
                continue
            now = time.monotonic()
            aborted: list[str] = []
            failed: list[str] = []
            # Under the lock: the database thread cannot disarm (and close
            # or replace the connection) while its socket is being shut down.
            with self._lock:
                for entry in [e for e in self._armed.values() if not e.fired and now >= e.expires]:
                    entry.fired = True
                    self.fired += 1
                    try:
                        aborted.append(_abort(entry.wrapper))
                    except Exception as exc:  # pragma: no cover - best effort
                        failed.append(type(exc).__name__)
            for vendor in aborted:
                log.warning("db call over its deadline, aborting vendor=%s", vendor)
            for error in failed:  # pragma: no cover
                log.warning("db watchdog abort failed error=%s", error)


def _abort(wrapper: Any) -> str:
    """Make the call blocked on ``wrapper``'s connection return with an error."""
    raw = wrapper.connection
    vendor = wrapper.vendor
    if raw is None:
        return vendor
    if vendor == "sqlite":
        raw.interrupt()
        return vendor
    shut_down_socket(raw.fileno())
    return vendor


def shut_down_socket(fd: int) -> None:
    """Shut a database connection's socket down, both ways, from outside the
    call blocked on it: its wait ends with an error at once, and the
    connection is broken (the driver closes it). A duplicate descriptor, so
    the driver's own stays valid until it closes it."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


watchdog = Watchdog()
_local = threading.local()


def current() -> Deadline | None:
    """The deadline armed around the running call on this thread, if any."""
    return getattr(_local, "entry", None)


def expired() -> bool:
    entry = current()
    return entry is not None and entry.expired

# SQLite's lock wait for unguarded calls (settings: PRAGMA busy_timeout).
_SQLITE_BUSY_MS = 20_000


@contextmanager
def deadline(timeout: float | None = None, *, started: float | None = None) -> Iterator[Deadline]:
    """On the database thread: abort the database work of this block ``timeout``
    seconds after ``started`` (monotonic; default now)."""
    if timeout is None:
        timeout = float(dorm_settings.DB_TIMEOUT_SECONDS)
    if started is not None:
        timeout = started + timeout - time.monotonic()
        if timeout <= 0:
            # Waited its whole deadline for the thread: do not start now.
            raise DatabaseTimeout("database call over its deadline before it started")
    wrapper = connections[DEFAULT_DB_ALIAS]
    entry = watchdog.arm(timeout, wrapper)
    outer, _local.entry = current(), entry
    sqlite = wrapper.vendor == "sqlite"
    try:
        if sqlite:
            wrapper.ensure_connection()
            _busy_timeout(wrapper, max(1, int(timeout * 1000)))
        yield entry
    except BaseException as exc:
        release_frames(exc)
        if entry.expired and isinstance(exc, Exception):
            _drop(wrapper)
            raise DatabaseTimeout(f"database call over its deadline ({type(exc).__name__})") from exc
        raise
    finally:
        watchdog.disarm(entry)
        _local.entry = outer
        if sqlite and wrapper.connection is not None:
            try:
                _busy_timeout(wrapper, _SQLITE_BUSY_MS)
            except Exception:
                _drop(wrapper)
        elif entry.fired:
            _drop(wrapper)


def _busy_timeout(wrapper: Any, ms: int) -> None:
    wrapper.connection.execute(f"PRAGMA busy_timeout={int(ms)}")


def _drop(wrapper: Any) -> None:
    """Close a connection the watchdog broke: the next call opens a new one."""
    try:
        if wrapper.in_atomic_block:
            return  # atomic's exit closes it
        wrapper.close()
    except Exception:
        try:
            wrapper.connection = None
        except Exception:  # pragma: no cover
            pass


def release_frames(exc: BaseException) -> None:
    """Drop the local variables of the frames ``exc`` (and the exceptions it
    chains) went through, here on the database thread. Every call of the
    database thread runs under :func:`deadline`, whose exit does this for
    an exception that leaves the call; the group committer does it for the
    exceptions it returns as results.

    A failed call's traceback keeps its frames, and with them the driver's
    cursor (Django's ``self.cursor().execute("BEGIN ...")`` is one such
    cursor, never closed when the statement fails). The exception ends up in
    reference cycles, so the cursor is freed by whichever thread next runs
    the garbage collector: often the event loop's. Freeing an SQLite cursor
    resets its statement, which takes the connection's mutex, and the
    database thread holds that mutex for the whole lock wait of its next
    call (up to ``DORM_DB_TIMEOUT_SECONDS``): the event loop, and every room
    with it, froze until that wait ended (``test_sqlite_write_lock_outage``'s
    ~1 s cursor stall). Cleared here, the cursor is freed on this thread, now.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        # Frames still running (this thread's callers) are skipped by
        # clear_frames; finished ones lose their locals, not their lines.
        traceback.clear_frames(e.__traceback__)
        stack.append(e.__cause__)
        stack.append(e.__context__)


def guarded(func: Callable[..., Any], timeout: float | None = None) -> Callable[..., Awaitable[Any]]:
    """``database_sync_to_async(func)`` under a deadline counted from the call.

    The deadline starts when the call is made, not when Django's database
    thread gets to it: a call queued behind others that hung fails when its
    own time is up (at once if it already is), so a room's commit is
    answered within its deadline even if the thread was busy.
    """

    async def call(*args: Any, **kwargs: Any) -> Any:
        submitted = time.monotonic()

        def run() -> Any:
            with deadline(timeout, started=submitted):
                close_old_connections()
                try:
                    return func(*args, **kwargs)
                finally:
                    close_old_connections()

        return await sync_to_async(run, thread_sensitive=True)()

    call.__name__ = getattr(func, "__name__", "guarded")
    call.__wrapped__ = func  # type: ignore[attr-defined]
    return call


def database_thread_executor(loop: asyncio.AbstractEventLoop) -> Any:
    """The executor ``database_sync_to_async`` would use from here, if it is
    asgiref's fixed single thread (the case in a server: no sync caller above,
    no per-request thread context); None otherwise."""
    if getattr(AsyncToSync.executors, "current", None) is not None:
        return None
    if SyncToAsync.thread_sensitive_context.get(None) is not None:
        return None
    if loop in AsyncToSync.loop_thread_executors:
        return None
    return SyncToAsync.single_thread_executor


def _reuse_connection() -> None:
    """Close the default connection if it failed or is past its age; else keep it.

    What ``close_old_connections`` does for it, without resetting the health
    check: on PostgreSQL that reset costs a ``SELECT 1`` round trip before the
    next statement. A connection the server dropped fails its next statement
    instead, which marks it (``errors_occurred``) and is closed here on the
    next call.
    """
    wrapper = connections[DEFAULT_DB_ALIAS]
    if wrapper.connection is not None and (
        wrapper.errors_occurred or (wrapper.close_at is not None and time.monotonic() >= wrapper.close_at)
    ):
        wrapper.close_if_unusable_or_obsolete()


def hot_guarded(func: Callable[..., Any], timeout: float | None = None) -> Callable[..., Awaitable[Any]]:
    """:func:`guarded` for calls made for every message (the group commit).

    Same thread, same deadline, same connection as every other call of the
    database thread, minus what measured ~70 us per call on SQLite and
    ~300 us on PostgreSQL (docs/performance.md, "The commit hop"): asgiref's
    context copying and shielding, ``close_old_connections`` on every alias
    twice, and the health-check query that follows on PostgreSQL. Falls back
    to asgiref when a sync caller or a per-request thread context decides
    the thread (tests, management commands).
    """

    async def call(*args: Any) -> Any:
        submitted = time.monotonic()

        def run() -> Any:
            with deadline(timeout, started=submitted):
                _reuse_connection()
                return func(*args)

        loop = asyncio.get_running_loop()
        executor = database_thread_executor(loop)
        if executor is None:
            return await sync_to_async(run, thread_sensitive=True)()
        return await loop.run_in_executor(executor, run)

    call.__name__ = getattr(func, "__name__", "hot_guarded")
    call.__wrapped__ = func  # type: ignore[attr-defined]
    return call


_installed = False
# The settings' connect_timeout per alias (install() lowers it per connect).
_configured_connect_timeout: dict[str, int] = {}


def install() -> None:
    """Put every ``database_sync_to_async`` call of the process under the deadline.

    The rooms' database thread is shared with presence's ledger, the alarm
    claims, billing's flush and the connection-time access lookup: one of
    them blocked on a frozen database would hold every room's commit behind
    it, so all of them get the same deadline (called from the app's ready()).
    """
    global _installed
    if _installed:
        return
    original = DatabaseSyncToAsync.thread_handler

    def thread_handler(self: Any, loop: Any, *args: Any, **kwargs: Any) -> Any:
        if current() is not None:
            return original(self, loop, *args, **kwargs)
        with deadline():
            return original(self, loop, *args, **kwargs)

    DatabaseSyncToAsync.thread_handler = thread_handler  # type: ignore[method-assign]

    # A call whose deadline passed must not open a new connection: Django's
    # health check swallows the aborted ``SELECT 1`` and reconnects, and a
    # connect to a frozen server cannot be aborted (libpq waits its
    # connect_timeout). A connect that starts in time gets at most the time left.
    from django.db.backends.base.base import BaseDatabaseWrapper

    original_connect = BaseDatabaseWrapper.connect

    def connect(self: Any) -> None:
        entry = current()
        if entry is not None:
            left = entry.expires - time.monotonic()
            if entry.fired or left <= 0:
                raise DatabaseTimeout("database call over its deadline: not connecting")
            if self.vendor == "postgresql":
                options = self.settings_dict.setdefault("OPTIONS", {})
                configured = _configured_connect_timeout.setdefault(
                    self.alias, int(options.get("connect_timeout") or max(2, int(dorm_settings.DB_TIMEOUT_SECONDS + 0.999)))
                )
                options["connect_timeout"] = max(2, min(configured, int(left + 0.999)))
        return original_connect(self)

    BaseDatabaseWrapper.connect = connect  # type: ignore[method-assign]
    _installed = True

