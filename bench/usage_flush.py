"""Cost of the once-a-minute usage flush with many rooms used in the minute.

    .venv/bin/python bench/usage_flush.py                        # SQLite, 10,000 rooms
    .venv/bin/python bench/usage_flush.py --rooms 1000
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/fbench .venv/bin/python bench/usage_flush.py

Until connection spans (billing/spans.py), a room with open sockets got a
usage row every minute even when silent, so an idle server with 10,000
hibernated rooms wrote 10,000 rows a minute: the largest piece of its idle
CPU (docs/performance.md, "Idle CPU"). Now only rooms used in the minute get
a row; this is what a minute in which 10,000 rooms were used costs. It
creates the rooms in a fresh database, then times
``billing.flush.write`` of one minute's counters for all of them (the
upsert path the server's flush takes: half new rows, half added to), and
prints the median milliseconds of CPU and of wall time per flush.
A PostgreSQL database is migrated, so give it one of its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _inprocess import setup_django

setup_django("usage-flush")

from django.core.management import call_command  # noqa: E402

from billing.flush import write  # noqa: E402
from billing.meter import Counters  # noqa: E402
from rooms.models import Room  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    call_command("migrate", verbosity=0)
    prefix = f"uf{os.getpid()}"
    Room.objects.bulk_create([Room(slug=f"{prefix}-{i}") for i in range(args.rooms)], batch_size=2000)
    minute = int(time.time() // 60) - 10_000  # past minutes of its own
    cpu, wall = [], []
    for r in range(args.rounds):
        # Each round: a new minute for every room (inserts), then the same
        # minute again (the upsert's add path), as two flushes of one minute.
        for again in (False, True):
            taken = [(f"{prefix}-{i}", Counters(minute=minute + r, peak_connections=1 + i % 3)) for i in range(args.rooms)]
            c0, w0 = time.process_time(), time.perf_counter()
            rows = write(taken, [])
            cpu.append((time.process_time() - c0) * 1000)
            wall.append((time.perf_counter() - w0) * 1000)
            assert rows == args.rooms, rows
            print(f"round {r + 1}{' (add)' if again else ''}: {cpu[-1]:.0f} ms CPU, {wall[-1]:.0f} ms wall", flush=True)
    print(f"usage flush of {args.rooms:,} rooms: median {statistics.median(cpu):.0f} ms CPU, "
          f"{statistics.median(wall):.0f} ms wall per flush")


if __name__ == "__main__":
    main()
