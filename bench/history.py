"""History page latency at 1e3 and 1e6 events in one room (SQLite, WAL).

    .venv/bin/python bench/history.py                  # 1e3 and 1e6
    .venv/bin/python bench/history.py --events 1000    # quick

For each size: a fresh SQLite file (migrated), one room filled with N events
by ``executemany`` in 50,000-row transactions (a whiteboard mix: draws, 5%
erases, 100 users), then timed GETs of /api/rooms/<slug>/history through the
whole Django + DRF stack (in-process client, token auth), for pages at the
start, the middle and the end of the log, backwards, and filtered. Prints
p50/p95/max per page kind in milliseconds, and the SQL alone for the basic page.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILL_CHUNK = 50_000
USERS = 100


def setup(db_path: Path) -> None:
    os.environ["SQLITE_PATH"] = str(db_path)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DORM_LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fill(room_id: int, n: int) -> float:
    from django.db import connection, transaction

    rng = random.Random(7)
    sql = (
        "INSERT INTO rooms_event (room_id, seq, type, user_id, client_id, payload, ts) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)"
    )
    started = time.perf_counter()
    for lo in range(1, n + 1, FILL_CHUNK):
        rows = []
        for seq in range(lo, min(lo + FILL_CHUNK, n + 1)):
            if seq > 10 and rng.random() < 0.05:
                type_, payload = "erase", f'{{"seq":{rng.randrange(1, seq)}}}'
            else:
                type_, payload = "draw", f'{{"x":{seq % 1000},"y":{seq % 777},"c":"#333"}}'
            rows.append((room_id, seq, type_, f"u{seq % USERS}", "", payload, 1_700_000_000_000 + seq))
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, rows)
    return time.perf_counter() - started


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn()  # warm the page cache and the code paths
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"p50 {statistics.median(ms):7.2f}  p95 {p95:7.2f}  max {ms[-1]:7.2f}"


def run(n: int, repeat: int) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from rooms.api import history
    from rooms.api.history import Query
    from rooms.models import Room

    user = get_user_model().objects.create_user(f"bench{n}", is_staff=True)
    token = Token.objects.create(user=user).key
    room = Room.objects.create(slug=f"bench-{n}", owner=user)
    fill_s = fill(room.pk, n)
    print(f"\n{n:,} events: filled in {fill_s:.1f} s ({n / fill_s:,.0f} events/s)")
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Token {token}")
    base = f"/api/rooms/{room.slug}/history"
    pages = {
        "since=10 (start)": f"{base}?since=10",
        "since=N/2 (middle)": f"{base}?since={n // 2}",
        "since=N-100 (end)": f"{base}?since={n - 100}",
        "before=N (newest)": f"{base}?before={n}",
        "since=N/2 type=erase": f"{base}?since={n // 2}&type=erase",
        "since=N/2 user=u7": f"{base}?since={n // 2}&user=u7",
        "since=N/2 limit=1000": f"{base}?since={n // 2}&limit=1000",
    }
    for name, url in pages.items():

        def get(url: str = url) -> None:
            response = client.get(url)
            assert response.status_code == 200, response.content

        print(f"  {name:24s} {summary(timed(get, repeat))}  ms/page (HTTP, 100 events unless noted)")
    for name, since in (("SQL only, since=10", 10), ("SQL only, since=N-100", n - 100)):
        q = Query(since=since, before=None, limit=100)
        print(f"  {name:24s} {summary(timed(lambda q=q: history.page(room.pk, q), repeat))}  ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=200, help="timed requests per page kind")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"SQLite {__import__('sqlite3').sqlite_version}")
    with tempfile.TemporaryDirectory() as tmp:
        setup(Path(tmp) / "bench.sqlite3")
        for n in args.events:
            run(n, args.repeat)


if __name__ == "__main__":
    main()
