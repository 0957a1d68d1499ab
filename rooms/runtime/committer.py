"""Group commit across the rooms of a process.

Each actor already commits all events of its batch in one transaction. With
many rooms each sending a little, that is still one transaction (one fsync,
one trip to Django's single database thread) per room per batch: 100 rooms
at 10 msg/s queued a thousand transactions a second on that thread, and
events waited hundreds of milliseconds for their turn (docs/performance.md,
"cluster"). The committer takes every batch staged by any room while the
previous commit ran and commits them together (``persistence.commit_batches``):
each batch stays atomic, a failure stays in its room, and the output gate is
unchanged (an actor broadcasts after its own ``commit`` returned).

On PostgreSQL a round of events alone (nearly every round: one ``INSERT``,
or one ``COPY`` above 8 events) skips the thread: it goes on the loop's own
connection (``rooms/runtime/loop_commit.py``), with the same guarantees.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence

from rooms.runtime import db_watchdog, loop_commit, persistence
from rooms.runtime.alarms import AlarmWrite
from rooms.runtime.persistence import EventRow

Waiters = list[asyncio.Future[None]]


def _commit_and_report(batches: list[persistence.Batch], loop: asyncio.AbstractEventLoop, waiters: Waiters, started: list[bool]) -> None:
    """On the database thread: commit, then hand each waiter its result.

    The results go back through the loop from here, not through the
    awaiting coroutine: a leader cancelled while its commit ran (its room
    stopped) must not lose the other rooms' results.
    """
    started.append(True)
    try:
        results: list[BaseException | None] = persistence.commit_batches(batches)
    except BaseException as exc:  # the thread itself failed: nothing is known to be committed
        results = [exc if isinstance(exc, Exception) else ConnectionError("commit failed")] * len(batches)
    for result in results:
        if result is not None:
            # Returned, not raised: deadline() does not see these
            # (release_frames says what a cursor held by a traceback costs).
            db_watchdog.release_frames(result)
    if db_watchdog.expired():
        # Aborted by the watchdog (or over the deadline anyway): say so, so
        # the rooms degrade instead of retrying into a database that hangs.
        timeout = db_watchdog.DatabaseTimeout("group commit over its deadline")
        results = [None if r is None else timeout for r in results]
    loop.call_soon_threadsafe(_resolve, waiters, results)


async def _commit_on_loop(
    writer: loop_commit.LoopEventWriter, batches: list[persistence.Batch], rows: list[EventRow], waiters: Waiters
) -> None:
    try:
        results = await writer.commit_batches(batches, rows)
    except BaseException as exc:  # cancelled (the loop stops): nothing is known to be committed
        _resolve(waiters, [exc if isinstance(exc, Exception) else ConnectionError("commit stopped")] * len(waiters))
        raise
    _resolve(waiters, results)


def _resolve(waiters: Waiters, results: list[BaseException | None]) -> None:
    for future, result in zip(waiters, results):
        if future.done():
            continue
        if result is None:
            future.set_result(None)
        else:
            future.set_exception(result)


# Under the watchdog's deadline (DORM_DB_TIMEOUT_SECONDS): a database that
# stops answering fails the commit instead of blocking every room. The hot
# variant: every durable message waits for this hop.
db_commit_and_report = db_watchdog.hot_guarded(_commit_and_report)

# Most room batches in one transaction: bounds its size and the time the
# first of them waits for the last.
MAX_BATCHES_PER_COMMIT = 256


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class GroupCommitter:
    """Leader/follower: an idle committer commits in the caller's own coroutine.

    So a lone room's commit reaches the database thread exactly when it did
    before (no task in between, same order as the room's other database
    work); batches staged while a commit runs wait and go together in the
    next one, run by a task.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[persistence.Batch, asyncio.Future[None]]] = []
        self._busy = False

    async def commit(
        self, room_id: int, rows: list[EventRow], writes: dict[str, str | None], alarm_writes: Sequence[AlarmWrite] = ()
    ) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # Retrieved even if this caller is gone by the time it is resolved.
        future.add_done_callback(_retrieve)
        self._queue.append(((room_id, rows, writes, alarm_writes), future))
        if not self._busy:
            self._busy = True
            try:
                await self._round()
            finally:
                if self._queue:
                    loop.create_task(self._drain(), name="dorm-group-commit")
                else:
                    self._busy = False
        await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                try:
                    await self._round()
                except db_watchdog.DatabaseTimeout:
                    continue  # its rooms were told; the next round has its own deadline
        finally:
            self._busy = False
            if self._queue:  # cancelled with work left: fail it, nobody else will
                for _, future in self._queue:
                    if not future.done():
                        future.set_exception(ConnectionError("group commit stopped"))
                self._queue.clear()

    async def _round(self) -> None:
        taken = self._queue[:MAX_BATCHES_PER_COMMIT]
        del self._queue[:MAX_BATCHES_PER_COMMIT]
        waiters = [future for _, future in taken]
        batches = [batch for batch, _ in taken]
        loop = asyncio.get_running_loop()
        writer = loop_commit.writer_for(loop)
        rows = persistence.one_statement_rows(batches) if writer is not None else None
        if writer is not None and rows is not None:
            # In a task of its own, as the thread's round: a leader cancelled
            # meanwhile (its room stopped) does not take the others' results.
            await asyncio.shield(loop.create_task(_commit_on_loop(writer, batches, rows, waiters), name="dorm-loop-commit"))
            return
        started: list[bool] = []
        try:
            await db_commit_and_report(batches, loop, waiters, started)
        except BaseException as exc:
            # Cancelled (or the executor failed) before the thread ran:
            # nothing was committed, say so. If it ran, it reports itself.
            if not started:
                _resolve(waiters, [exc if isinstance(exc, db_watchdog.DatabaseTimeout) else ConnectionError("commit not started")] * len(waiters))
            raise


_committers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupCommitter] = weakref.WeakKeyDictionary()


async def commit_batch(
    room_id: int, rows: list[EventRow], writes: dict[str, str | None], alarm_writes: Sequence[AlarmWrite] = ()
) -> None:
    """Commit one room's batch, together with whatever other rooms commit now."""
    loop = asyncio.get_running_loop()
    committer = _committers.get(loop)
    if committer is None:
        committer = _committers[loop] = GroupCommitter()
    await committer.commit(room_id, rows, writes, alarm_writes)
