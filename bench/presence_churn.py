"""The cost of presence under churn: joins+leaves per second one process sustains.

    .venv/bin/python bench/presence_churn.py            # both parts
    .venv/bin/python bench/presence_churn.py --part backend
    .venv/bin/python bench/presence_churn.py --part server --seconds 10 --concurrency 64

- ``backend``: join+leave pairs per second on the presence backends alone
  (memory; Redis at ``DORM_BENCH_REDIS_URL``, default redis://127.0.0.1:6379/5),
  one connection after another in one room of 200 members (what the actor
  does per join and leave; the welcome's list comes from the actor's roster),
  and the cost of one full member list read (REST, actor wake).
- ``server``: a real daphne process in the embedded mode (SQLite, memory
  presence, the ledger on). ``concurrency`` clients each connect, read their
  welcome and close, in a loop, in one room watched by an observer: joins+leaves
  per second, and the presence frames the observer got per second (coalesced:
  at most 10/s). Results are printed as one JSON line; docs/presence.md
  records them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


async def bench_backend(pairs: int) -> dict[str, Any]:
    import django

    django.setup()
    from presence.backends.memory import MemoryPresence
    from presence.backends.redis import RedisPresence

    results: dict[str, Any] = {}
    url = os.environ.get("DORM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
    backends: list[tuple[str, Any]] = [("memory", MemoryPresence())]
    prefix = f"dorm:bench:{os.getpid()}:"
    try:
        redis_backend = RedisPresence(url, prefix)
        await redis_backend.client.ping()
        backends.append(("redis", redis_backend))
    except Exception as exc:
        results["redis"] = f"skipped: {type(exc).__name__}"
    for name, backend in backends:
        for i in range(200):
            await backend.join("bench", f"m{i}", f"member{i}", "p")
        started = time.perf_counter()
        for i in range(pairs):
            await backend.join("bench", f"c{i}", f"u{i}", "p")
            await backend.leave("bench", f"c{i}", f"u{i}")
        elapsed = time.perf_counter() - started
        reads = 50
        read_started = time.perf_counter()
        for _ in range(reads):
            await backend.members("bench")
        read = (time.perf_counter() - read_started) / reads
        results[name] = {
            "join_leave_per_s": round(pairs / elapsed),
            "us_per_pair": round(elapsed / pairs * 1e6, 1),
            "members_200_us": round(read * 1e6),
        }
        if name == "redis":
            keys = [k async for k in backend.client.scan_iter(match=prefix + "*")]
            if keys:
                await backend.client.delete(*keys)
            await backend.close()
    return results


async def bench_server(seconds: float, concurrency: int, repo: str | None) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    from tests.e2e import server as server_module
    from tests.e2e.server import start_server

    if repo:  # the "before": the same churn against another checkout (e.g. main)
        server_module.REPO = Path(repo).resolve()

    directory = Path(tempfile.mkdtemp(prefix="dorm-bench-presence-"))
    server = start_server(
        "daphne",
        directory,
        extra_env={"DORM_LOG_LEVEL": "WARNING", "DORM_HIBERNATE_AFTER_SECONDS": "30"},
        name="bench",
    )
    counts = {"pairs": 0, "presence_frames": 0}
    try:
        observer = await connect(server.url("churn", userId="observer"), proxy=None, ping_interval=None, max_size=None)
        await observer.recv()  # welcome

        async def watch() -> None:
            async for text in observer:
                if orjson.loads(text)["type"] in ("user_joined", "user_left", "presence", "presence_diff"):
                    counts["presence_frames"] += 1

        async def churn(worker: int, deadline: float) -> None:
            n = 0
            while time.monotonic() < deadline:
                async with connect(
                    server.url("churn", userId=f"w{worker}-{n}"), proxy=None, ping_interval=None, max_size=None
                ) as ws:
                    await ws.recv()  # welcome: the join is done
                counts["pairs"] += 1
                n += 1

        watcher = asyncio.ensure_future(watch())
        started = time.monotonic()
        await asyncio.gather(*(churn(w, started + seconds) for w in range(concurrency)))
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)
        watcher.cancel()
        await observer.close()
        await asyncio.sleep(0.5)  # the last ledger batch
        try:
            sessions = server.query("SELECT COUNT(*) FROM presence_presencesession WHERE room = 'churn'")[0][0]
        except Exception:
            sessions = None  # a checkout without the ledger
        return {
            "concurrency": concurrency,
            "seconds": round(elapsed, 2),
            "join_leave_per_s": round(counts["pairs"] / elapsed),
            "presence_frames_per_s": round(counts["presence_frames"] / elapsed, 1),
            "ledger_rows": sessions,
        }
    finally:
        server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["backend", "server", "all"], default="all")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repo", help="run the server from this checkout instead (a before/after comparison)")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if args.part in ("backend", "all"):
        out["backend"] = await bench_backend(args.pairs)
    if args.part in ("server", "all"):
        out["server"] = await bench_server(args.seconds, args.concurrency, args.repo)
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    asyncio.run(main())
