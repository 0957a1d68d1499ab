"""Cost of one group commit's hop to the database thread, in-process.

    .venv/bin/python bench/commit_hop.py                      # SQLite, synchronous=FULL
    SQLITE_SYNCHRONOUS=NORMAL .venv/bin/python bench/commit_hop.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mbench .venv/bin/python bench/commit_hop.py

Commits one event after another (no batching) through the group committer's
hop as it is (``db_watchdog.hot_guarded``) and through the general one
(``db_watchdog.guarded``: asgiref's ``sync_to_async`` and
``close_old_connections`` around the call, which on PostgreSQL also brings a
health-check query per commit), alternating, and prints the median
microseconds per commit of each (docs/performance.md, "The commit hop").
A PostgreSQL database is migrated, so give it one of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from _inprocess import setup_django

setup_django("commit-hop")

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from rooms.models import Room  # noqa: E402
from rooms.runtime import committer, db_watchdog  # noqa: E402


async def per_commit_us(hop: object, room_id: int, first_seq: int, n: int) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    for seq in range(first_seq, first_seq + n):
        future = loop.create_future()
        batch = (room_id, [(room_id, seq, "draw", "u", "", '{"x":1}', 0)], {}, ())
        await hop([batch], loop, [future], [])  # type: ignore[operator]
        await future
    return (time.perf_counter() - started) / n * 1e6


async def main(n: int, rounds: int) -> None:
    room = await asyncio.to_thread(lambda: Room.objects.create(slug=f"hop-{time.time_ns()}", kind="whiteboard"))
    hops = {
        "hot_guarded (the group commit's)": db_watchdog.hot_guarded(committer._commit_and_report),
        "guarded (asgiref + close_old_connections)": db_watchdog.guarded(committer._commit_and_report),
    }
    results: dict[str, list[float]] = {name: [] for name in hops}
    seq = 1
    for r in range(rounds):
        for name, hop in hops.items():
            results[name].append(await per_commit_us(hop, room.pk, seq, n))
            seq += n
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k.split()[0]} {v[-1]:.0f} us" for k, v in results.items()),
              file=sys.stderr)
    vendor = connection.vendor
    sync = os.environ.get("SQLITE_SYNCHRONOUS", "FULL") if vendor == "sqlite" else "-"
    print(f"{vendor} (synchronous={sync}), {n} commits x {rounds} rounds, median us per commit:")
    for name, values in results.items():
        print(f"  {name}: {statistics.median(values):.0f}  (each round: {', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    asyncio.run(main(args.commits, args.rounds))
