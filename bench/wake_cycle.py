"""The database thread's share of one wake and sleep of a room, per call.

    .venv/bin/python bench/wake_cycle.py                         # SQLite, 2,000 rooms
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/wbench .venv/bin/python bench/wake_cycle.py

A hibernated room that gets a frame costs the single database thread
``load_room`` (its row, snapshot, log tail, recent ids), its alarms, ``start_run``, the
frame's commit, and when it sleeps again ``save_snapshot`` and ``end_run``
(rooms/runtime/persistence.py). This times each of those, on rooms of a
fresh database, as the actor calls them (the commit with one event), and
prints the median microseconds of CPU per call over the rounds. Run it in a
worktree of another revision to compare (docs/performance.md). A
PostgreSQL database is migrated, so give it one of its own.

Each call is also a hop from the event loop to the database thread and
back; ``--hops`` times an empty call through each way the runtime makes
that hop (``guarded``, ``hot_guarded``), on asyncio's loop and uvloop's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from _inprocess import setup_django

setup_django("wake-cycle")

from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from rooms.models import Alarm, Room  # noqa: E402
from rooms.runtime import persistence  # noqa: E402
from rooms.runtime.alarms import load_alarms  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--hops", action="store_true", help="also time an empty call's hop to the database thread")
    args = p.parse_args()
    call_command("migrate", verbosity=0)
    if args.hops:
        hops()
    prefix = f"wc{os.getpid()}"
    Room.objects.bulk_create([Room(slug=f"{prefix}-{i}") for i in range(args.rooms)], batch_size=2000)
    ids = dict(Room.objects.filter(slug__startswith=prefix).values_list("slug", "id"))
    due = timezone.now() + timedelta(days=1)
    Alarm.objects.bulk_create([Alarm(room_id=room_id, name="tick", due_at=due, next_attempt_at=due, token=1)
                               for room_id in list(ids.values())[::4]])  # every fourth room has an alarm
    slugs = list(ids)
    per_call: dict[str, list[float]] = {}

    def timed(name: str, calls: list[Callable[[], object]]) -> list[object]:
        c0 = time.process_time()
        results = [call() for call in calls]
        per_call.setdefault(name, []).append((time.process_time() - c0) / len(calls) * 1e6)
        return results

    for r in range(args.rounds):
        seq = r + 1
        now_ms = int(time.time() * 1000)
        timed("load_room", [lambda s=s: persistence.load_room(s, create_kind=None, ids_since_ms=now_ms - 600_000, ids_limit=2048)
                            for s in slugs])
        timed("load_alarms", [lambda s=s: load_alarms(ids[s]) for s in slugs])
        runs = timed("start_run", [lambda s=s: persistence.start_run(ids[s], timezone.now()) for s in slugs])
        timed("commit_batch (1 event)", [lambda s=s: persistence.commit_batch(ids[s], [(ids[s], seq, "draw", "u", f"c{seq}", "{}", now_ms)], {})
                                         for s in slugs])
        timed("save_snapshot", [lambda s=s: persistence.save_snapshot(ids[s], seq, '{"strokes": []}') for s in slugs])
        timed("end_run", [lambda run=run: persistence.end_run(run, 1234, "idle") for run in runs])  # type: ignore[misc]
        print(f"round {r + 1}: " + ", ".join(f"{name} {values[-1]:.0f} us" for name, values in per_call.items()), flush=True)
    medians = {name: statistics.median(values) for name, values in per_call.items()}
    print(f"per call, median of {args.rounds} rounds over {args.rooms:,} rooms (us of CPU): "
          + ", ".join(f"{name} {value:.0f}" for name, value in medians.items())
          + f"; a wake and sleep in all {sum(medians.values()):.0f}")


def hops(calls: int = 2000, rounds: int = 5) -> None:
    import asyncio

    import uvloop

    from rooms.runtime.db_watchdog import guarded, hot_guarded

    def nothing() -> None:
        return None

    async def measure() -> None:
        for name, hop in (("guarded", guarded(nothing)), ("hot_guarded", hot_guarded(nothing))):
            per: list[float] = []
            for _ in range(rounds):
                c0 = time.process_time()
                for _ in range(calls):
                    await hop()
                per.append((time.process_time() - c0) / calls * 1e6)
            print(f"  {name}: {statistics.median(per):.0f} us of CPU per empty call", flush=True)

    for loop_name, run in (("asyncio", asyncio.run), ("uvloop", uvloop.run)):
        print(f"hops to the database thread, {loop_name}:")
        run(measure())


if __name__ == "__main__":
    main()
