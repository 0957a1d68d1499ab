"""Rounds of events alone committed from the event loop, on PostgreSQL.

A group commit on Django's database thread pays a hop each way: the loop
hands the round to the thread (a wake-up, the GIL), the thread hands the
result back (another wake-up). For a commit of one event on PostgreSQL the
hop and Django's cursor measured 720 us of wall time and 332 us of the
process's CPU, against 564 us and 177 us for the same statement on a
psycopg ``AsyncConnection`` in the loop; 128 events in one ``COPY``, 3,300
/ 716 against 2,742 / 557 (``bench/commit_hop.py --events N``;
docs/performance.md, "Nineteenth round").

On PostgreSQL every round of events alone is one statement
(:func:`persistence.one_statement_rows`: an ``INSERT`` of a few rows, else a
``COPY``), and those go here, on a connection of the loop's own in
autocommit, so the statement is its own transaction exactly as on the
thread. Rounds with storage or alarm writes, SQLite, and calls made inside a
caller's transaction stay on the database thread. The guarantees are the
thread's:

- all rows of the statement or none; a failed round is retried batch by
  batch, so one room's duplicate seq (a stale writer) is that room's alone;
- a deadline, ``DORM_DB_TIMEOUT_SECONDS`` from the round's start: past it
  the connection's socket is shut down, as the watchdog does to the
  thread's connection (cancelling psycopg's wait instead would make it send
  a cancel request and wait up to 10 s more for a server that does not
  answer), and every batch gets :class:`DatabaseTimeout`: in doubt, the
  rooms reload and find out (docs/runtime.md, "Database outage");
- errors are Django's classes (``IntegrityError``, ``OperationalError``), so
  the rooms tell an unavailable database from a refused statement as they
  do for the thread's.

``DORM_DB_COMMITS_ON_LOOP=false`` sends every round to the thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.sql
from django.db import DEFAULT_DB_ALIAS, connections
from django.db import utils as db_utils

from rooms.conf import dorm_settings
from rooms.runtime import persistence
from rooms.runtime.db_watchdog import DatabaseTimeout, database_thread_executor, is_unavailable, shut_down_socket

log = logging.getLogger("dorm.db")

# Django's classes, most specific first (its DatabaseErrorWrapper's order).
_DJANGO_ERRORS = (
    db_utils.DataError,
    db_utils.OperationalError,
    db_utils.IntegrityError,
    db_utils.InternalError,
    db_utils.ProgrammingError,
    db_utils.NotSupportedError,
    db_utils.DatabaseError,
    db_utils.InterfaceError,
    db_utils.Error,
)

# psycopg's connect arguments that are Django's own (its sync cursor class,
# its adapters for model values): the rows here are plain ints and strings.
_DJANGO_ONLY_PARAMS = ("cursor_factory", "context")


def as_django_error(exc: psycopg.Error) -> Exception:
    for django_class in _DJANGO_ERRORS:
        if isinstance(exc, getattr(psycopg, django_class.__name__)):
            error = django_class(*exc.args)
            error.__cause__ = exc
            return error
    return exc  # pragma: no cover - every psycopg.Error is a psycopg.Error


class LoopEventWriter:
    """One event loop's connection, and the rounds it committed."""

    def __init__(self) -> None:
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.commits = 0  # rounds committed here (/metrics: dorm_process_commits_on_loop)

    async def commit_batches(
        self, batches: Sequence[persistence.Batch], rows: list[persistence.EventRow] | None = None
    ) -> list[BaseException | None]:
        """:func:`persistence.commit_batches` for a round of events alone:
        per batch, None or its error. ``rows``: the round's rows, if the
        caller has them already (:func:`persistence.one_statement_rows`)."""
        deadline = time.monotonic() + float(dorm_settings.DB_TIMEOUT_SECONDS)
        if rows is None:
            rows = [row for _, batch_rows, _, _ in batches for row in batch_rows]
        try:
            await self._insert(rows, deadline)
        except Exception as exc:
            if len(batches) == 1 or is_unavailable(exc):
                # One batch: the error is its own. The database is gone or
                # hangs: retrying each batch would wait for it once per room.
                return [exc] * len(batches)
        else:
            self.commits += 1
            return [None] * len(batches)
        results: list[BaseException | None] = []
        for _, batch_rows, _, _ in batches:
            try:
                await self._insert(batch_rows, deadline)
            except Exception as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    async def _insert(self, rows: list[persistence.EventRow], deadline: float) -> None:
        conn = await self._connection(deadline)
        left = deadline - time.monotonic()
        if left <= 0:
            raise DatabaseTimeout("group commit over its deadline before it started")
        aborted: list[bool] = []
        timer = asyncio.get_running_loop().call_later(left, self._abort, conn, aborted)
        try:
            if len(rows) > persistence.COPY_FROM_ROWS:
                async with conn.cursor() as cursor, cursor.copy(persistence.copy_events_sql()) as copy:
                    for row in rows:
                        await copy.write_row(row)
            else:
                await conn.execute(persistence.insert_events_sql(len(rows)), [value for row in rows for value in row])
        except psycopg.Error as exc:
            await self._drop(conn, keep=not aborted and isinstance(exc, psycopg.errors.IntegrityError))
            if aborted:
                raise DatabaseTimeout("group commit over its deadline (aborted)") from exc
            raise as_django_error(exc) from exc
        except BaseException:
            await self._drop(conn, keep=False)  # cancelled or broken mid-statement: state unknown
            raise
        finally:
            timer.cancel()

    async def _connection(self, deadline: float) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        left = deadline - time.monotonic()
        if left <= 0:
            raise DatabaseTimeout("group commit over its deadline: not connecting")
        params = connection_params()
        # libpq's connect_timeout is whole seconds, at least 2: a connect
        # that starts in time gets at most the time left (as the thread's).
        configured = int(params.get("connect_timeout") or 0) or 2**31
        params["connect_timeout"] = max(2, min(configured, int(left + 0.999)))
        role = connections[DEFAULT_DB_ALIAS].settings_dict["OPTIONS"].get("assume_role")
        try:
            conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        except psycopg.Error as exc:
            raise as_django_error(exc) from exc
        if role:  # as Django does for its own connections
            try:
                await conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role)))
            except psycopg.Error as exc:
                await conn.close()
                raise as_django_error(exc) from exc
        self._conn = conn
        return conn

    def _abort(self, conn: psycopg.AsyncConnection[Any], aborted: list[bool]) -> None:
        """Past the deadline: make the statement's wait end with an error now."""
        aborted.append(True)
        log.warning("db call over its deadline, aborting vendor=postgresql where=loop")
        try:
            fd = conn.pgconn.socket
        except psycopg.Error:
            return
        shut_down_socket(fd)

    async def _drop(self, conn: psycopg.AsyncConnection[Any], *, keep: bool) -> None:
        """After a failed statement: a refused one leaves the connection
        usable; anything else closes it and the next round opens another."""
        if keep and not conn.broken:
            return
        if self._conn is conn:
            self._conn = None
        try:
            await conn.close()
        except Exception:  # pragma: no cover - closing a broken connection
            pass

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def connection_params() -> dict[str, Any]:
    """psycopg's connect arguments for Django's default database, as its
    own connection would get them (``DATABASES``, ``OPTIONS``)."""
    params = connections[DEFAULT_DB_ALIAS].get_connection_params()
    for key in _DJANGO_ONLY_PARAMS:
        params.pop(key, None)
    return params


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopEventWriter] = weakref.WeakKeyDictionary()


def writer_for(loop: asyncio.AbstractEventLoop) -> LoopEventWriter | None:
    """This loop's writer, if its rounds of events alone go on the loop: on
    PostgreSQL, in a server (the database thread is asgiref's single thread:
    no caller's transaction around the round), unless turned off."""
    if not dorm_settings.DB_COMMITS_ON_LOOP or database_thread_executor(loop) is None:
        return None
    writer = _writers.get(loop)
    if writer is None:
        if not persistence.on_postgresql():
            return None
        writer = _writers[loop] = LoopEventWriter()
    return writer


def commits_on_loop(loop: asyncio.AbstractEventLoop | None) -> int:
    writer = _writers.get(loop) if loop is not None else None
    return 0 if writer is None else writer.commits


async def close(loop: asyncio.AbstractEventLoop) -> None:
    """Close the loop's connection (shutdown): its rounds are all done by then."""
    writer = _writers.pop(loop, None)
    if writer is not None:
        try:
            await writer.close()
        except Exception as exc:  # pragma: no cover - best effort at exit
            log.warning("closing the loop's database connection failed error=%s", type(exc).__name__)
