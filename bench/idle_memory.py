"""Where an idle connection's memory goes on Dorm (issue 12's idle target).

    .venv/bin/python bench/idle_memory.py --connections 5000 [--top 25]

Starts Dorm as ``bench/suite.py`` does (daphne, production-like settings),
with ``DORM_TRACEMALLOC`` set (config/asgi.py: tracemalloc from the start,
a snapshot on SIGUSR1); takes a snapshot, opens N idle connections into
N/100 rooms (as the suite's ``idle`` workload), waits 3 s, takes another,
and prints the RSS delta per connection and the traced growth per
connection, by file and by line. tracemalloc's own bookkeeping inflates RSS
here: take the RSS figure from ``bench/suite.py --workloads idle``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import suite
from _loadgen import Recorder
from _rooms import anonymous_path, open_welcomed


def snapshot(pid: int, directory: Path, n: int) -> tracemalloc.Snapshot:
    path = directory / f"{n}.snap"
    os.kill(pid, signal.SIGUSR1)
    for _ in range(600):
        time.sleep(0.1)
        if path.exists():
            size = -1
            while size != path.stat().st_size:  # written
                size = path.stat().st_size
                time.sleep(0.3)
            return tracemalloc.Snapshot.load(str(path))
    raise RuntimeError("no snapshot")


async def _open(port: int, n: int) -> list:
    rooms = [f"m{secrets.token_hex(3)}-{i}" for i in range(max(1, n // 100))]
    opened = await open_welcomed(Recorder(), suite.HOST, port, [anonymous_path(rooms[i % len(rooms)], f"u{i}") for i in range(n)])
    await asyncio.sleep(3.0)
    return [c for c in opened if c is not None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--frames", type=int, default=8)
    args = p.parse_args()
    suite.raise_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        env = {"DORM_TRACEMALLOC": str(d), "DORM_TRACEMALLOC_FRAMES": str(args.frames)}
        with suite.start_server("dorm", d, d, None, env) as server:
            time.sleep(1.0)
            s0 = snapshot(server.pid, d, 0)
            rss0 = suite.rss_kib([server.pid])
            loop = asyncio.new_event_loop()
            clients = loop.run_until_complete(_open(server.port, args.connections))
            rss1 = suite.rss_kib([server.pid])
            s1 = snapshot(server.pid, d, 1)
            held = len(clients)
            for c in clients:
                c.transport.close()
            loop.run_until_complete(asyncio.sleep(1.0))
            loop.close()
    flt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    s0, s1 = s0.filter_traces(flt), s1.filter_traces(flt)
    total = sum(s.size for s in s1.statistics("filename")) - sum(s.size for s in s0.statistics("filename"))
    print(f"{held:,} held; RSS delta {(rss1 - rss0) / held:.1f} KiB per connection (traced: inflated by tracemalloc);"
          f" traced growth {total / 1024 / held:.2f} KiB per connection")
    for key in ("filename", "lineno"):
        print(f"\n-- traced growth per connection, by {key} --")
        for st in s1.compare_to(s0, key)[: args.top]:
            if st.size_diff <= 0:
                continue
            print(f"{st.size_diff / held:8.0f} B {st.count_diff / held:6.2f} blocks  {st.traceback[0]}")
    print("\n-- by traceback (top 12) --")
    for st in s1.compare_to(s0, "traceback")[:12]:
        print(f"{st.size_diff / held:8.0f} B {st.count_diff / held:6.2f} blocks")
        for line in st.traceback.format()[-2 * min(args.frames, 8):]:
            print("    " + line)


if __name__ == "__main__":
    sys.exit(main())
