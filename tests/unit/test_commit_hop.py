"""The group commit's hop to the database thread (db_watchdog.hot_guarded).

It skips asgiref's wrapper and ``close_old_connections`` for speed; these
tests pin what it must still do: run on the same thread and connection as
``database_sync_to_async``, keep the deadline, check a connection that
failed, and not health-check the connection before every commit.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError, connection, connections

from rooms.runtime import db_watchdog

pytestmark = pytest.mark.django_db(transaction=True)


def where() -> tuple[int, object]:
    with connection.cursor() as cursor:  # a statement, as a commit makes
        cursor.execute("SELECT 1")
    return threading.get_ident(), connection.connection


async def test_it_runs_on_the_database_thread_with_its_connection() -> None:
    assert db_watchdog.database_thread_executor(asyncio.get_running_loop()) is not None
    assert await db_watchdog.hot_guarded(where)() == await database_sync_to_async(where)()


async def test_no_health_check_per_call_but_one_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[bool] = []

    def is_usable(self: object) -> bool:
        checks.append(True)
        return True

    await db_watchdog.hot_guarded(where)()
    monkeypatch.setattr(type(connections["default"]), "is_usable", is_usable)
    first = await db_watchdog.hot_guarded(where)()
    for _ in range(20):
        assert await db_watchdog.hot_guarded(where)() == first
    assert checks == []  # close_old_connections would have checked before each call

    def fails() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    with pytest.raises(OperationalError):
        await db_watchdog.hot_guarded(fails)()
    # The next call checks the failed connection (and Django closes it when
    # the check fails; the test database is in memory, so it is kept here).
    await db_watchdog.hot_guarded(where)()
    after_failure = len(checks)
    assert after_failure >= 1
    for _ in range(20):
        await db_watchdog.hot_guarded(where)()
    assert len(checks) == after_failure  # checked after the failure, not before every call again


async def test_the_deadline_holds() -> None:
    def sleeps_in_sqlite() -> None:
        with connection.cursor() as cursor:  # a statement the watchdog can interrupt
            cursor.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
            )

    with pytest.raises(db_watchdog.DatabaseTimeout):
        await db_watchdog.hot_guarded(sleeps_in_sqlite, timeout=0.2)()
    assert await db_watchdog.hot_guarded(where)()  # and the next call works
