"""Q&A spike benchmark: 200 seminar clients asking questions at once, one room.

    .venv/bin/python bench/qa_spike.py                      # 150 then 300 questions/s
    .venv/bin/python bench/qa_spike.py --rates 150,600 --clients 200 --window 10

Starts Dorm under daphne on a fresh, migrated SQLite file (the embedded mode,
``synchronous=FULL``: every ack is on disk) with the room's kind set to
``qa``, opens ``--clients`` connections (each its own user, default rate
limits and all: at 150 questions/s from 200 users each asks 0.75/s), then
every client asks open-loop at ``rate / clients`` for ``--window`` seconds.

A question carries its number and send time in its text. The script counts,
per rate: questions sent, acked, and stored (counted in the server's SQLite
file), deliveries to the other clients (each question is due to
``clients - 1`` of them), refusals of any kind, ack and delivery latency
percentiles, and how long after the last question the last ack came
(``drain``): a room that falls behind shows a growing drain and p99, one that
drops shows ``acked < sent`` or missing deliveries. The Markdown table goes
to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
from contextlib import contextmanager
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from _loadgen import Client, percentile
from fanout import HOST, _running_server, git_revision

ASK = b'"type":"ask"'
ACK = b'"type":"ack"'
TEXT = b'"text":"q '


class Recorder:
    """Sends, acks and deliveries of one step, in flat arrays."""

    def __init__(self) -> None:
        self.send_times = array("d")
        self.deliveries = array("I")
        self.acked = array("b")
        self.ack_ms = array("d")
        self.delivery_ms = array("d")
        self.last_ack_at = 0.0
        self.ack_at = array("d")  # perf_counter() of each first ack
        self.refused: dict[str, int] = {}

    def on_frame(self, data: bytes) -> None:
        head = data[:24]
        if ASK in head:
            now = time.perf_counter_ns()
            i = data.find(TEXT)
            if i < 0:
                return
            n_text, t_text = data[i + len(TEXT) : data.index(b'"', i + len(TEXT))].split(b" ")
            n = int(n_text)
            self.deliveries[n] += 1
            self.delivery_ms.append((now - int(t_text)) / 1e6)
        elif ACK in head:
            now = time.perf_counter()
            n = int(orjson.loads(data)["id"])
            if not self.acked[n]:
                self.acked[n] = 1
                self.ack_ms.append((now - self.send_times[n]) * 1000.0)
                self.last_ack_at = now
                self.ack_at.append(now)
        elif b'"error"' in head or b'"rate_limited"' in head or b'"close"' in head:
            frame = orjson.loads(data)
            reason = str(frame.get("reason") or frame.get("type"))
            self.refused[reason] = self.refused.get(reason, 0) + 1


@dataclass
class Row:
    rate: float
    clients: int
    sent: int
    sent_per_s: float
    acked: int
    stored: int
    deliveries: int
    expected_deliveries: int
    refused: dict[str, int]
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    delivery_p50_ms: float | None
    delivery_p99_ms: float | None
    drain_ms: float
    server_cpu_pct: float
    server_wait_pct: float
    generator_cpu_pct: float
    generator_wait_pct: float


async def _ask(client: Client, rec: Recorder, rate: float, start: float, stop: float) -> None:
    interval = 1.0 / rate
    due = start
    while due < stop:
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
            continue
        n = len(rec.send_times)
        rec.send_times.append(time.perf_counter())
        rec.deliveries.append(0)
        rec.acked.append(0)
        client.send_text(b'{"type":"ask","id":"%d","payload":{"text":"q %d %d"}}' % (n, n, time.perf_counter_ns()))
        due += interval


def cpu_and_wait(pid: int) -> tuple[float, float]:
    """Seconds a process ran, and seconds its threads were runnable but waited for a CPU
    (``/proc/<pid>/task/*/schedstat``): on a shared machine the second one is
    latency that no server could avoid."""
    ran = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue
        ran += int(fields[0])
        waited += int(fields[1])
    return ran / 1e9, waited / 1e9


def stored_questions(db: Path, room: str) -> int:
    """Questions in the room's log, read from the server's SQLite file (WAL: every commit)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=20) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM rooms_event e JOIN rooms_room r ON r.id = e.room_id WHERE r.slug = ? AND e.type = 'ask'",
            (room,),
        ).fetchone()
    return int(row[0])


async def step(port: int, pid: int, db: Path, rate: float, clients_n: int, window: float, drain_limit: float, timeline: bool) -> Row:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    room = f"qa-{int(rate)}-{int(time.time())}"

    async def open_one(i: int) -> Client:
        path = f"/ws/{room}?userId=u{i}"
        _, client = await loop.create_connection(lambda: Client(rec, HOST, port, path), HOST, port)  # type: ignore[arg-type]
        welcome = await client.welcome
        assert welcome.get("kind") == "qa", welcome
        return client

    clients = await asyncio.wait_for(asyncio.gather(*(open_one(i) for i in range(clients_n))), 60)
    try:
        await asyncio.sleep(1.0)  # the join announcements pass
        start = time.perf_counter() + 0.1
        stop = start + window
        per_client = rate / clients_n
        cpu0 = cpu_and_wait(pid)
        gen0 = cpu_and_wait(os.getpid())
        await asyncio.gather(
            *(_ask(c, rec, per_client, start + i / rate, stop) for i, c in enumerate(clients))
        )
        sent_wall = time.perf_counter() - start
        cpu1 = cpu_and_wait(pid)
        gen1 = cpu_and_wait(os.getpid())
        last_sent = time.perf_counter()
        sent = len(rec.send_times)
        expected = sent * (clients_n - 1)
        deadline = last_sent + drain_limit
        while time.perf_counter() < deadline:
            if sum(rec.acked) >= sent and sum(rec.deliveries) >= expected:
                break
            await asyncio.sleep(0.02)
        stored = await asyncio.to_thread(stored_questions, db, room)
    finally:
        await asyncio.gather(*(c.close(2.0) for c in clients), return_exceptions=True)
    if timeline:
        # Per second of the step: questions sent and first acks received.
        def per_second(times: Any) -> list[int]:
            counts = [0] * (int(window + drain_limit) + 2)
            for t in times:
                counts[min(len(counts) - 1, max(0, int(t - start)))] += 1
            return counts
        print(f"  sent/s  {per_second(rec.send_times)}", file=sys.stderr)
        print(f"  acked/s {per_second(rec.ack_at)}", file=sys.stderr)
    ack_ms = sorted(rec.ack_ms)
    delivery_ms = sorted(rec.delivery_ms)
    return Row(
        rate=rate,
        clients=clients_n,
        sent=sent,
        sent_per_s=sent / sent_wall,
        acked=sum(rec.acked),
        stored=stored,
        deliveries=sum(rec.deliveries),
        expected_deliveries=expected,
        refused=rec.refused,
        ack_p50_ms=percentile(ack_ms, 0.5),
        ack_p99_ms=percentile(ack_ms, 0.99),
        delivery_p50_ms=percentile(delivery_ms, 0.5),
        delivery_p99_ms=percentile(delivery_ms, 0.99),
        drain_ms=max(0.0, (rec.last_ack_at - last_sent) * 1000.0),
        server_cpu_pct=(cpu1[0] - cpu0[0]) / sent_wall * 100.0,
        server_wait_pct=(cpu1[1] - cpu0[1]) / sent_wall * 100.0,
        generator_cpu_pct=(gen1[0] - gen0[0]) / sent_wall * 100.0,
        generator_wait_pct=(gen1[1] - gen0[1]) / sent_wall * 100.0,
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    head = (
        "| questions/s offered | sent/s | clients | sent | acked | stored | deliveries (of expected) | refused "
        "| ack p50 ms | ack p99 ms | delivery p50 ms | delivery p99 ms | last ack after last send ms | server CPU (waiting for a CPU) | generator CPU (waiting) |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(r.refused.items())) or "0"
        lines.append(
            f"| {r.rate:,.0f} | {r.sent_per_s:,.1f} | {r.clients} | {r.sent:,} | {r.acked:,} | {r.stored:,} "
            f"| {r.deliveries:,} ({r.expected_deliveries:,}) | {refused} | {fmt(r.ack_p50_ms)} | {fmt(r.ack_p99_ms)} "
            f"| {fmt(r.delivery_p50_ms)} | {fmt(r.delivery_p99_ms)} | {fmt(r.drain_ms, 0)} | {r.server_cpu_pct:.0f}% ({r.server_wait_pct:.0f}%) | {r.generator_cpu_pct:.0f}% ({r.generator_wait_pct:.0f}%) |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="150,300", help="questions/s over all clients, comma-separated (default 150,300)")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--window", type=float, default=10.0, help="seconds of asking per rate")
    p.add_argument("--drain", type=float, default=15.0, help="most seconds to wait for the last acks and deliveries")
    p.add_argument("--timeline", action="store_true", help="print questions sent and acked per second to stderr")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    # 200 connections from one address, faster than the default 10/s.
    env = {"DORM_DEFAULT_KIND": "qa", "DORM_CONNECT_RATE_PER_SECOND": "10000", "DORM_CONNECT_BURST": "10000"}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"qa_spike {started} rev {git_revision()} on {platform.node()} ({platform.processor() or platform.machine()})", file=sys.stderr)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dorm-qa-") as tmp:
        db = Path(tmp) / "db.sqlite3"
        # fanout's server, on a database file this script can read.
        with contextmanager(_running_server)("dorm", "daphne", [], Path(tmp), Path(tmp), env) as (port, pid):
            for rate in rates:
                row = asyncio.run(step(port, pid, db, rate, args.clients, args.window, args.drain, args.timeline))
                print(f"rate {rate:g}: sent {row.sent} acked {row.acked} stored {row.stored} "
                      f"deliveries {row.deliveries}/{row.expected_deliveries} ack p99 {fmt(row.ack_p99_ms)} ms", file=sys.stderr)
                rows.append(row)
    print(table(rows))
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=1))
    ok = all(r.acked == r.sent == r.stored and r.deliveries == r.expected_deliveries for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
