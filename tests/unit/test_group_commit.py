"""Group commit across rooms (rooms/runtime/committer.py) and the bus's event encoding."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest
from channels.db import database_sync_to_async
from django.db import utils as db_utils

from rooms.models import Event, Room
from rooms.runtime import committer, db_watchdog, loop_commit, persistence
from rooms.runtime.cluster import decode_event, encode_event
from tests.fixtures import commit_checks


def row(room_id: int, seq: int) -> persistence.EventRow:
    return (room_id, seq, "draw", "u", f"c{seq}", '{"x":1}', 1)


# The same checks run on an SQLite file and on PostgreSQL in
# tests/e2e/test_commit_statements.py.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("check", commit_checks.CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_commit_statements(check: Callable[[], None]) -> None:
    check()


@pytest.mark.django_db(transaction=True)
def test_a_storage_write_fails_alone_in_a_round() -> None:
    a = Room.objects.create(slug="gc-a")
    b = Room.objects.create(slug="gc-b")
    persistence.commit_batch(a.pk, [row(a.pk, 1)], {})
    # Room a's batch repeats seq 1 (a stale writer) in a round that is one
    # transaction (b writes storage): only a's batch fails.
    results = persistence.commit_batches([(a.pk, [row(a.pk, 1), row(a.pk, 2)], {}, ()), (b.pk, [row(b.pk, 1)], {"k": "v"}, ())])
    assert results[0] is not None and results[1] is None
    assert list(Event.objects.filter(room=a).values_list("seq", flat=True)) == [1]
    assert list(Event.objects.filter(room=b).values_list("seq", flat=True)) == [1]


@pytest.mark.django_db(transaction=True)
async def test_concurrent_rooms_share_transactions_and_each_learns_its_result() -> None:
    rooms = [await database_sync_to_async(Room.objects.create)(slug=f"gc-{i}") for i in range(20)]
    await asyncio.gather(*(committer.commit_batch(r.pk, [row(r.pk, 1)], {}) for r in rooms))
    assert await database_sync_to_async(Event.objects.filter(room__slug__startswith="gc-").count)() == 20
    with pytest.raises(Exception):
        await committer.commit_batch(rooms[0].pk, [row(rooms[0].pk, 1)], {})  # duplicate seq


@pytest.mark.parametrize(
    ("seq", "exclude", "text"),
    [(7, "abc_DEF-12", '{"type":"draw","seq":7}'), (None, None, '{"type":"cursor","p":"a b\\nc"}'), (0, None, "")],
)
def test_bus_event_round_trip(seq: int | None, exclude: str | None, text: str) -> None:
    data = encode_event("dorm.inbox.x!y", text, seq, exclude)
    assert data[:1] == b"E"
    assert decode_event(data) == ("dorm.inbox.x!y", seq, exclude, text)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (psycopg.errors.UniqueViolation("duplicate key"), db_utils.IntegrityError),
        (psycopg.OperationalError("server closed the connection unexpectedly"), db_utils.OperationalError),
        (psycopg.InterfaceError("the connection is closed"), db_utils.InterfaceError),
        (psycopg.errors.QueryCanceled("canceling statement"), db_utils.OperationalError),
        (psycopg.errors.UndefinedTable("no such table"), db_utils.ProgrammingError),
    ],
)
def test_loop_commit_errors_are_djangos_classes(raised: psycopg.Error, expected: type[Exception]) -> None:
    """The loop's rounds fail with the classes the thread's would (the rooms
    tell an unavailable database from a refused statement by them)."""
    error = loop_commit.as_django_error(raised)
    assert type(error) is expected and error.__cause__ is raised and error.args == raised.args
    assert db_watchdog.is_unavailable(error) == (expected in (db_utils.OperationalError, db_utils.InterfaceError))


def test_loop_commits_only_on_postgresql() -> None:
    """The unit tests' SQLite: every round goes to the database thread."""

    async def probe() -> object:
        return loop_commit.writer_for(asyncio.get_running_loop())

    assert asyncio.run(probe()) is None
