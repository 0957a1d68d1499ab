"""A failed database call leaves no SQLite cursor for another thread to free.

A failed call's traceback holds the frames it went through, and with them the
driver's cursor (Django's ``self.cursor().execute("BEGIN IMMEDIATE")`` is never
closed when the statement fails). Exceptions sit in reference cycles, so such a
cursor used to be freed by whichever thread next ran the garbage collector,
often the event loop's. Freeing it resets its statement, which waits for the
connection's mutex, and the database thread holds that mutex for the whole lock
wait of its next call: the event loop froze for up to
``DORM_DB_TIMEOUT_SECONDS`` (``tests/e2e/test_db_outage.py::
test_sqlite_write_lock_outage``, cursors ~1 s late). ``db_watchdog.release_frames``
drops those frames' locals on the database thread; every test here fails
without it.

The database is a file (as in production), locked by another connection; the
test database (in memory, shared cache) fails differently.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import DEFAULT_DB_ALIAS, OperationalError, connection, connections, transaction
from django.db.backends.sqlite3.base import DatabaseWrapper

from rooms.runtime import committer, db_watchdog

pytestmark = pytest.mark.django_db(transaction=True)

LOCK_WAIT = 0.6  # DORM_DB_TIMEOUT_SECONDS here: each failed call waits this long


@pytest.fixture
def locked_file_database(tmp_path: Path, settings: Any) -> Iterator[None]:
    """The database thread's connection is a file that another connection holds locked."""
    settings.DORM = {**getattr(settings, "DORM", {}), "DB_TIMEOUT_SECONDS": LOCK_WAIT}
    db_watchdog.install()
    path = tmp_path / "db.sqlite3"
    file_settings = {**connection.settings_dict, "NAME": str(path)}

    @database_sync_to_async
    def swap(new: Any) -> Any:
        """On the database thread (its connections are its own): install ``new``."""
        old = connections[DEFAULT_DB_ALIAS]
        if new is None:  # the file database, connected (WAL set up) before the lock is taken
            new = DatabaseWrapper(file_settings, alias=DEFAULT_DB_ALIAS)
            new.ensure_connection()
        else:
            old.close()
        connections[DEFAULT_DB_ALIAS] = new
        return old

    test_db = asyncio.run(swap(None))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()
        asyncio.run(swap(test_db))


def _write() -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _bad_statement() -> None:
    # Django's own pattern (``self.cursor().execute("BEGIN ...")``): a cursor
    # nobody closes. The statement fails when it runs (so it exists, and
    # freeing the cursor resets it); the connection stays open.
    connection.cursor().execute("SELECT abs(-9223372036854775808)")


async def _group_commit() -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    await committer.db_commit_and_report([(1, [], {}, [])], loop, [waiter], [])
    await waiter


CALLS: dict[str, Callable[[], Awaitable[Any]]] = {
    "guarded": lambda: db_watchdog.guarded(_write)(),
    "hot_guarded": lambda: db_watchdog.hot_guarded(_write)(),
    "database_sync_to_async": lambda: database_sync_to_async(_write)(),
    "group commit": _group_commit,
}


def _cursors_left_to_the_collector(call: Callable[[], Awaitable[Any]]) -> int:
    """Run ``call`` (it fails: the lock), then count the SQLite cursors that
    only a garbage collection would free."""

    async def run() -> None:
        with pytest.raises(OperationalError):
            await call()

    gc.collect()
    gc.disable()
    try:
        asyncio.run(run())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return sum(isinstance(o, sqlite3.Cursor) for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("path", list(CALLS))
def test_a_failed_call_frees_its_cursor_on_the_database_thread(locked_file_database: None, path: str) -> None:
    assert _cursors_left_to_the_collector(CALLS[path]) == 0


def test_the_event_loop_never_waits_for_the_database_threads_lock_wait(locked_file_database: None) -> None:
    """The symptom itself: a garbage collection on the loop's thread while the
    database thread waits for the lock takes no time."""
    collect_took: list[float] = []

    async def run() -> None:
        with pytest.raises(OperationalError):
            await db_watchdog.guarded(_bad_statement)()  # left its cursor to the collector (before the fix)
        waiting = asyncio.ensure_future(db_watchdog.guarded(_write)())  # holds the connection's mutex
        await asyncio.sleep(LOCK_WAIT / 3)
        assert not waiting.done()
        started = time.monotonic()
        gc.collect()
        collect_took.append(time.monotonic() - started)
        with pytest.raises(OperationalError):
            await waiting

    gc.collect()
    gc.disable()  # only the explicit collection, on this thread
    try:
        asyncio.run(run())
    finally:
        gc.enable()
    assert threading.current_thread() is threading.main_thread()
    assert collect_took[0] < LOCK_WAIT / 3, collect_took
