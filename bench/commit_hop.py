"""Cost of one group commit's hop to the database thread, in-process.

    .venv/bin/python bench/commit_hop.py                      # SQLite, synchronous=FULL
    SQLITE_SYNCHRONOUS=NORMAL .venv/bin/python bench/commit_hop.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mbench .venv/bin/python bench/commit_hop.py

Commits one event after another (no batching) through the group committer's
hop as it is (``db_watchdog.hot_guarded``) and through the general one
(``db_watchdog.guarded``: asgiref's ``sync_to_async`` and
``close_old_connections`` around the call, which on PostgreSQL also brings a
health-check query per commit), and on PostgreSQL through the event loop's
own connection (``loop_commit``: no hop, what a round of events alone takes
since the nineteenth round), alternating, and prints the median
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
from rooms.runtime import committer, db_watchdog, loop_commit, persistence  # noqa: E402


Timing = tuple[float, float]  # wall, process CPU (every thread): us per commit


def rows(room_id: int, first_seq: int, n: int) -> list[persistence.EventRow]:
    return [(room_id, seq, "draw", "u", "", '{"x":1}', 0) for seq in range(first_seq, first_seq + n)]


async def per_commit_us(hop: object, room_id: int, first_seq: int, n: int, per: int) -> Timing:
    loop = asyncio.get_running_loop()
    started, cpu = time.perf_counter(), time.process_time()
    for seq in range(first_seq, first_seq + n * per, per):
        future = loop.create_future()
        await hop([(room_id, rows(room_id, seq, per), {}, ())], loop, [future], [])  # type: ignore[operator]
        await future
    return (time.perf_counter() - started) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def per_commit_on_loop_us(writer: loop_commit.LoopEventWriter, room_id: int, first_seq: int, n: int, per: int) -> Timing:
    started, cpu = time.perf_counter(), time.process_time()
    for seq in range(first_seq, first_seq + n * per, per):
        results = await writer.commit_batches([(room_id, rows(room_id, seq, per), {}, ())])
        if results[0] is not None:
            raise results[0]
    return (time.perf_counter() - started) / n * 1e6, (time.process_time() - cpu) / n * 1e6


async def main(n: int, rounds: int, per: int) -> None:
    room = await asyncio.to_thread(lambda: Room.objects.create(slug=f"hop-{time.time_ns()}", kind="whiteboard"))
    hops: dict[str, object] = {
        "hot_guarded (the group commit's thread hop)": db_watchdog.hot_guarded(committer._commit_and_report),
        "guarded (asgiref + close_old_connections)": db_watchdog.guarded(committer._commit_and_report),
    }
    writer = loop_commit.writer_for(asyncio.get_running_loop())
    if writer is not None:  # PostgreSQL: what a round of events alone takes now
        hops["loop (the event loop's own connection)"] = writer
    results: dict[str, list[Timing]] = {name: [] for name in hops}
    seq = 1
    for r in range(rounds):
        for name, hop in hops.items():
            if isinstance(hop, loop_commit.LoopEventWriter):
                results[name].append(await per_commit_on_loop_us(hop, room.pk, seq, n, per))
            else:
                results[name].append(await per_commit_us(hop, room.pk, seq, n, per))
            seq += n * per
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k.split()[0]} {v[-1][0]:.0f} us ({v[-1][1]:.0f} CPU)" for k, v in results.items()),
              file=sys.stderr)
    if writer is not None:
        await loop_commit.close(asyncio.get_running_loop())
    vendor = connection.vendor
    sync = os.environ.get("SQLITE_SYNCHRONOUS", "FULL") if vendor == "sqlite" else "-"
    print(f"{vendor} (synchronous={sync}), {n} commits of {per} event(s) x {rounds} rounds, median us per commit (wall; process CPU):")
    for name, values in results.items():
        walls, cpus = [w for w, _ in values], [c for _, c in values]
        print(f"  {name}: {statistics.median(walls):.0f}; CPU {statistics.median(cpus):.0f}"
              f"  (each round: {', '.join(f'{w:.0f}/{c:.0f}' for w, c in values)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=1, help="events per commit (default: %(default)s)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the event loop (default: %(default)s, as the servers)")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args.commits, args.rounds, args.events))
    else:
        asyncio.run(main(args.commits, args.rounds, args.events))
