"""Issue 12's workloads against Dorm and the references, one table.

    .venv/bin/python bench/suite.py                           # everything
    .venv/bin/python bench/suite.py --servers dorm,node-ws --workloads fanout,connect

Servers (each pinned to core 0, the generator to core 1, started here):

- ``dorm``: Dorm embedded (SQLite, daphne), production-like settings;
- ``dorm-uvicorn``: ``dorm`` under uvicorn ``--ws websockets-sansio`` (as
  ``make run-uvicorn``, no access log; ``BENCH_UVICORN_WS=websockets`` runs
  uvicorn's legacy protocol instead), for the connection workload;
- ``dorm-pg``: the same on a fresh PostgreSQL database (DATABASE_URL only,
  created and dropped here), for the durable-writes workload;
- ``naive``: the Channels tutorial consumer (bench/naive, in-memory layer);
- ``node-ws``: bench/references/node-ws (Node.js + ws), npm-installed on demand;
- ``miniflare``: bench/references/durable-objects (a Durable Object relay with
  the hibernation API on workerd through Miniflare), npm-installed on demand;
  skipped with the reason if it does not install or start.

Workloads:

- ``fanout``: one room, 50 clients, 5 senders, ladder of msg/s; the highest
  step with no loss and p99 < 50 ms is "highest sustained"; the 200 msg/s
  step is "fan-out at 9,800 deliveries/s offered".
- ``rooms``: 100 rooms x 10 clients, 1 sender per room at 2 msg/s (p99).
- ``durable``: durable events into one room (2 senders, a window of 500
  unacknowledged draws each): acks/s. Dorm on SQLite and on PostgreSQL.
- ``connect``: new connections per second with token auth (HS256 room tokens
  minted here with the server's secret; 50 connecting at a time).
  Miniflare's worker does not check tokens (it takes ?userId=).
- ``storm``: a join storm into one room: ``--storm-connections`` (5,000) with
  token auth, 50 connecting at a time, none leaving; joins/s, server CPU and
  frames received per join for each tenth of the storm and each half. The
  second half is what a join costs in a big room (every join is announced
  to the room, and every welcome lists the room). Then every client closes
  at once: server CPU per leave until the server is idle again.
  ``--storm-rooms N`` spreads the joins over N rooms: a whole process's
  clients coming back after a deploy.
- ``idle``: RSS per idle connection at 15,000 connections (this process and
  the servers get the hard open-files limit as their soft limit).
- ``hibernation``: Dorm only: 10,000 rooms with one open connection each,
  hibernated (DORM_HIBERNATE_AFTER_SECONDS=3): server CPU while idle, then
  wake-to-first-broadcast latency in 20 of them, then a wake storm: a draw
  into each of 2,000 more, 50 at a time (wakes/s, server CPU per wake, ack
  latency).

Progress goes to stderr; the table (with ratios to the references) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fanout
from _loadgen import Client, Recorder, cpu_seconds, percentile
from _rooms import Measure, RoomsConfig, anonymous_path, open_welcomed, run_rooms_step

REPO = fanout.REPO
HOST = fanout.HOST
REFS = REPO / "bench" / "references"
SUSTAINED_P99_MS = 50.0
FANOUT_RATES = "100,200,500,1000,2000,3000,4000,6000,8000"
NINE_EIGHT_HUNDRED = 200.0  # msg/s x 49 = 9,800 deliveries/s


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- process helpers -----------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """pid and all its descendants (Miniflare runs workerd as a child)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in tree(pid))


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listening
    socket's accept queue was full (TcpExt ListenOverflows, machine-wide:
    each dropped SYN is a client retrying a second later)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:]))
            return int(fields["ListenOverflows"]) if "ListenOverflows" in fields else None
    return None


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def npm_install(directory: Path) -> None:
    """Install a reference's npm packages from its lockfile, once."""
    if (directory / "node_modules").is_dir():
        return
    cmd = ["npm", "ci", "--no-audit", "--no-fund"] if (directory / "package-lock.json").exists() else ["npm", "install"]
    log(f"installing {directory.name}'s npm packages ...")
    subprocess.run(cmd, cwd=directory, check=True, timeout=600, capture_output=True)


# -- servers ---------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    pid: int
    tokens: bool  # checks ?token=


@contextmanager
def start_server(name: str, log_dir: Path, db_dir: Path, pg_url: str | None, extra_env: dict[str, str]) -> Iterator[Server]:
    port = fanout.free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PORT": str(port), "BENCH_TOKEN_SECRET": fanout.BENCH_TOKEN_SECRET}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    # As `make run` (its WS_PING_INTERVAL / WS_PING_TIMEOUT defaults).
    daphne = [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), "--websocket_timeout", "-1",
              "--ping-interval", "300", "--ping-timeout", "30"]
    tokens = True
    if name in ("dorm", "dorm-pg", "dorm-hibernate", "dorm-uvicorn"):
        env.update(fanout.DORM_ENV, DJANGO_SETTINGS_MODULE="config.settings", SQLITE_PATH=str(db_dir / f"{name}.sqlite3"))
        if name == "dorm-pg":
            assert pg_url is not None
            env["DATABASE_URL"] = pg_url
        if name == "dorm-hibernate":
            env["DORM_HIBERNATE_AFTER_SECONDS"] = "3"
            # The workload's clients are silent: with the default 60 s TTL
            # the first-opened sockets went offline, and woke their rooms to
            # say so, inside the idle window (10,000 rooms open in ~50 s).
            env["DORM_PRESENCE_TTL_SECONDS"] = "600"
        env.update(extra_env)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)
        cmd, cwd = daphne + ["config.asgi:application"], REPO
        if name == "dorm-uvicorn":  # as `make run-uvicorn`, without the access log
            flags = f"--ws {os.environ.get('BENCH_UVICORN_WS', 'websockets-sansio')} --ws-max-size 1048576 --log-level warning --no-access-log"
            cmd = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", HOST, "--port", str(port), *flags.split()]
    elif name == "naive":
        env["DJANGO_SETTINGS_MODULE"] = "bench.naive.settings"
        cmd, cwd, tokens = daphne + ["bench.naive.asgi:application"], REPO, False
    elif name == "node-ws":
        npm_install(REFS / "node-ws")
        cmd, cwd = ["node", "server.js"], REFS / "node-ws"
    elif name == "miniflare":
        npm_install(REFS / "durable-objects")
        cmd, cwd, tokens = ["node", "start.mjs"], REFS / "durable-objects", False
    else:
        raise ValueError(name)
    log_path = log_dir / f"{name}.log"
    proc = fanout.start_pinned(cmd, cwd, env, log_path)
    try:
        fanout.wait_listening(port, proc, log_path)
        if name == "miniflare":
            time.sleep(1.0)  # workerd listens behind Miniflare's proxy; let it settle
        yield Server(name, port, proc.pid, tokens)
    finally:
        for p in reversed(tree(proc.pid)[1:]):
            try:
                os.kill(p, signal.SIGTERM)
            except OSError:
                pass
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def pg_database() -> Iterator[str]:
    import cluster

    with cluster.fresh_database() as url:
        yield url


# -- results ---------------------------------------------------------------------------


@dataclass
class Result:
    server: str
    workload: str
    metric: str
    value: float | None
    unit: str
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def mint(room: str, user: str) -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": user, "room": room, "scope": "write", "exp": now + 900, "iat": now, "jti": secrets.token_urlsafe(12)}
    return jwt.encode(claims, fanout.BENCH_TOKEN_SECRET, algorithm="HS256")


def token_path(room: str, user: str) -> str:
    return f"/ws/{room}?token={mint(room, user)}"


def steps_note(r: Any) -> str:
    return f"other load {fanout.fmt(r.other_server_core_pct, 0)}% (both cores)"


def measure_for(server: Server) -> Measure:
    pids = tuple(tree(server.pid))
    return Measure(server_pids=pids, cores=(fanout.SERVER_CORE, fanout.GENERATOR_CORE) if fanout.PINNED else ())


def other_on_server_core(r: Any) -> float | None:
    # _rooms reports other load summed over the cores it watched.
    return r.other_server_core_pct


# -- workloads -------------------------------------------------------------------------


def w_fanout(args: argparse.Namespace, server: Server) -> list[Result]:
    rates = [float(x) for x in args.fanout_rates.split(",") if x.strip()]
    if NINE_EIGHT_HUNDRED not in rates:
        rates = sorted(rates + [NINE_EIGHT_HUNDRED])
    steps = []
    for rate in rates:
        best = None
        for attempt in range(args.retries + 1):
            cfg = RoomsConfig(
                host=HOST, ports=(server.port,), rooms=(f"f{secrets.token_hex(4)}",), message_rate=rate,
                clients=50, senders=5, window_s=args.window,
            )
            r = asyncio.run(run_rooms_step(cfg, measure_for(server)))
            log(f"  {server.name} fanout {rate:,.0f} msg/s: {r.achieved_deliveries_per_s:,.0f} deliveries/s, lost {r.lost_pct:.2f}%,"
                f" p50 {fanout.fmt(r.p50_ms)} ms, p99 {fanout.fmt(r.p99_ms)} ms, server CPU {fanout.fmt(r.server_cpu_pct, 0)}%,"
                f" gen {r.generator_cpu_pct:.0f}%, other {fanout.fmt(r.other_server_core_pct, 0)}%")
            if best is None or (r.other_server_core_pct or 0) < (best.other_server_core_pct or 0):
                best = r
            if (r.other_server_core_pct or 0) <= 2 * fanout.DISTURBED_PCT:
                break
        steps.append(best)
        if fanout.stop_reason(args, best) is not None:
            break
    out = []
    ok = [s for s in steps if s.lost == 0 and s.p99_ms is not None and s.p99_ms < SUSTAINED_P99_MS
          and s.sent_messages_per_s >= fanout.MIN_SENT_SHARE * s.offered_messages_per_s]
    best = max(ok, key=lambda s: s.achieved_deliveries_per_s, default=None)
    out.append(Result(server.name, "fanout", "highest sustained deliveries/s (no loss, p99 < 50 ms)",
                      best.achieved_deliveries_per_s if best else 0.0, "/s",
                      f"p50 {fanout.fmt(best.p50_ms)} / p99 {fanout.fmt(best.p99_ms)} ms, {steps_note(best)}" if best else "no step qualified",
                      {"steps": [s.as_dict() for s in steps]}))
    nine = next((s for s in steps if s.offered_messages_per_s == NINE_EIGHT_HUNDRED), None)
    if nine is not None:
        out.append(Result(server.name, "fanout-9800", "p50 ms at 9,800 deliveries/s offered", nine.p50_ms, "ms",
                          f"lost {nine.lost_pct:.2f}%, {steps_note(nine)}"))
        out.append(Result(server.name, "fanout-9800", "p99 ms at 9,800 deliveries/s offered", nine.p99_ms, "ms", ""))
    return out


def w_rooms(args: argparse.Namespace, server: Server) -> list[Result]:
    cfg = RoomsConfig(
        host=HOST, ports=(server.port,), rooms=tuple(f"m{secrets.token_hex(3)}-{i}" for i in range(100)),
        message_rate=200.0, clients=10, senders=1, window_s=args.window,
    )
    r = asyncio.run(run_rooms_step(cfg, measure_for(server)))
    log(f"  {server.name} rooms: p50 {fanout.fmt(r.p50_ms)} p99 {fanout.fmt(r.p99_ms)} ms, lost {r.lost_pct:.2f}%")
    return [Result(server.name, "rooms", "p99 ms, 100 rooms x 10 clients, 2 msg/s per room", r.p99_ms, "ms",
                   f"p50 {fanout.fmt(r.p50_ms)} ms, lost {r.lost_pct:.2f}%, {steps_note(r)}", {"step": r.as_dict()})]


async def _durable(server: Server, seconds: float, senders: int, window: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    room = f"d{secrets.token_hex(4)}"
    acked = 0
    wake = asyncio.Event()

    class AckRecorder(Recorder):
        def on_frame(self, data: bytes) -> None:
            nonlocal acked
            if b'"ack"' in data[:24]:
                acked += 1
                wake.set()

    rec = AckRecorder()
    clients = []
    for i in range(senders):
        path = f"/ws/{room}?userId=d{i}"
        _, c = await loop.create_connection(lambda p=path: Client(rec, HOST, server.port, p), HOST, server.port)
        await c.welcome
        clients.append(c)
    sent = 0
    stop = time.perf_counter() + 1.0 + seconds
    start_acked, t0, cpu0 = None, None, None

    async def pump(c: Client) -> None:
        nonlocal sent
        while time.perf_counter() < stop:
            while sent - acked < window * senders and time.perf_counter() < stop:
                c.send_text(b'{"type":"draw","id":"%d","payload":{"x":1,"y":2}}' % sent)
                sent += 1
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    tasks = [asyncio.create_task(pump(c)) for c in clients]
    await asyncio.sleep(1.0)  # warm-up
    start_acked, t0, cpu0 = acked, time.perf_counter(), tree_cpu(server.pid)
    await asyncio.gather(*tasks)
    rate = (acked - start_acked) / (time.perf_counter() - t0)
    cpu = (tree_cpu(server.pid) - cpu0) / (time.perf_counter() - t0) * 100
    await asyncio.gather(*(c.close(2.0) for c in clients), return_exceptions=True)
    return rate, cpu


def w_durable(args: argparse.Namespace, server: Server) -> list[Result]:
    with py_spy(args, server, "durable"):
        rate, cpu = asyncio.run(_durable(server, args.window, 2, 500))
    db = "PostgreSQL" if server.name == "dorm-pg" else "SQLite (synchronous=FULL)"
    log(f"  {server.name} durable: {rate:,.0f} acked events/s, server CPU {cpu:.0f}%")
    return [Result(server.name, "durable", f"durable events/s into one room, acks received ({db})", rate, "/s",
                   f"server CPU {cpu:.0f}%")]


async def _connect(server: Server, n: int, concurrency: int, tokens: bool) -> tuple[float, int, tuple[float, float], list[float]]:
    loop = asyncio.get_running_loop()
    rec = Recorder()
    rooms = [f"c{secrets.token_hex(3)}-{i}" for i in range(20)]
    plan = [(rooms[i % 20], f"u{i}") for i in range(n)]
    paths = [token_path(r, u) if tokens else anonymous_path(r, u) for r, u in plan]  # minted before the clock
    gate = asyncio.Semaphore(concurrency)
    clients: list[Client] = []
    failed = 0
    waits: list[float] = []  # ms from connect() to the welcome, per connection

    async def one(path: str) -> None:
        nonlocal failed
        async with gate:
            try:
                began = time.perf_counter()
                _, c = await loop.create_connection(lambda: Client(rec, HOST, server.port, path), HOST, server.port)
                clients.append(c)
                w = await asyncio.wait_for(c.welcome, 30)
                if w.get("type") != "welcome":
                    failed += 1
                else:
                    waits.append(1000 * (time.perf_counter() - began))
            except Exception:
                failed += 1

    t0 = time.perf_counter()
    server_cpu0, gen_cpu0 = tree_cpu(server.pid), time.process_time()
    await asyncio.gather(*(one(p) for p in paths))
    elapsed = time.perf_counter() - t0
    rate = (n - failed) / elapsed
    # Which side was the bottleneck: the server's CPU (its whole process tree)
    # and this generator's, as % of one core over the measured interval.
    cpu = (100 * (tree_cpu(server.pid) - server_cpu0) / elapsed, 100 * (time.process_time() - gen_cpu0) / elapsed)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(1.0)
    return rate, failed, cpu, waits


class CountingRecorder(Recorder):
    """Counts every frame the clients receive, and its bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.bytes = 0

    def on_frame(self, data: bytes) -> None:
        self.frames += 1
        self.bytes += len(data)


class StormClient(Client):
    """Takes the welcome without parsing it: at 5,000 members it lists 5,000
    users, and parsing it (~1.2 ms) cost the generator more than the join
    cost the server."""

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if fin and opcode == 1 and not self.welcome.done() and payload.startswith(b'{"type":"welcome"'):
            self.welcome.set_result({"type": "welcome"})
            return
        super()._frame(fin, opcode, payload)


def _storm_slice(before: tuple[Any, ...], after: tuple[Any, ...]) -> dict[str, float]:
    (d0, t0, c0, g0, f0, b0), (d1, t1, c1, g1, f1, b1) = before, after
    return {"members": d1, "joins": d1 - d0, "seconds": t1 - t0, "server_s": c1 - c0, "generator_s": g1 - g0,
            "frames": f1 - f0, "bytes": b1 - b0}


def _log_storm(server: Server, label: str, t: dict[str, float]) -> None:
    log(f"  {server.name} storm {label:>12}: {t['joins_per_s']:7,.0f} joins/s, server CPU {t['cpu_ms']:5.2f} ms,"
        f" {t['frames']:6.1f} frames and {t['kib']:6.1f} KiB received per join;"
        f" CPU server {t['server_pct']:3.0f}%, generator {t['generator_pct']:3.0f}%")


async def _leave_storm(server: Server, clients: list[Client]) -> dict[str, float]:
    """Every client of the room closes at once; the server's CPU until it is
    idle again (under 2 % of the core over 0.5 s), per leave."""
    await asyncio.sleep(3.0)  # the joins' last presence window, the ledger
    t0, cpu0 = time.perf_counter(), tree_cpu(server.pid)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    last_t, last_cpu = t0, cpu0
    while time.perf_counter() - t0 < 60:
        await asyncio.sleep(0.5)
        now, cpu = time.perf_counter(), tree_cpu(server.pid)
        if (cpu - last_cpu) / (now - last_t) < 0.02:
            break
        last_t, last_cpu = now, cpu
    return {"leaves": len(clients), "cpu_ms": 1000 * (last_cpu - cpu0) / max(1, len(clients)), "seconds": last_t - t0}


async def _storm(server: Server, n: int, concurrency: int, tokens: bool, n_rooms: int = 1) -> tuple[list[dict[str, float]], dict[str, float]]:
    loop = asyncio.get_running_loop()
    rec = CountingRecorder()
    prefix = f"s{secrets.token_hex(4)}"
    rooms = [prefix] if n_rooms == 1 else [f"{prefix}-{r}" for r in range(n_rooms)]
    plan = [(rooms[i % n_rooms], f"u{i}") for i in range(n)]
    paths = [token_path(room, user) if tokens else anonymous_path(room, user) for room, user in plan]
    gate = asyncio.Semaphore(concurrency)
    clients: list[Client] = []
    slice_size = max(1, n // 10)
    marks = [(0, time.perf_counter(), tree_cpu(server.pid), time.process_time(), 0, 0)]
    welcomed = 0

    async def one(path: str) -> None:
        nonlocal welcomed
        async with gate:
            _, c = await loop.create_connection(lambda: StormClient(rec, HOST, server.port, path), HOST, server.port)
            clients.append(c)
            await asyncio.wait_for(c.welcome, 120)
            welcomed += 1
            if welcomed % slice_size == 0:
                marks.append((welcomed, time.perf_counter(), tree_cpu(server.pid), time.process_time(), rec.frames, rec.bytes))
                _log_storm(server, f"up to {welcomed:,}", storm_totals([_storm_slice(marks[-2], marks[-1])]))

    try:
        await asyncio.gather(*(one(p) for p in paths))
        leave = await _leave_storm(server, clients)
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        await asyncio.sleep(2.0)
    return [_storm_slice(a, b) for a, b in zip(marks, marks[1:])], leave


def storm_totals(slices: list[dict[str, float]]) -> dict[str, float]:
    """Per join over some tenths of a storm (a presence window may straddle two tenths)."""
    joins = sum(s["joins"] for s in slices)
    seconds = sum(s["seconds"] for s in slices)
    return {"joins_per_s": joins / seconds, "cpu_ms": 1000 * sum(s["server_s"] for s in slices) / joins,
            "server_pct": 100 * sum(s["server_s"] for s in slices) / seconds,
            "generator_pct": 100 * sum(s["generator_s"] for s in slices) / seconds,
            "frames": sum(s["frames"] for s in slices) / joins, "kib": sum(s["bytes"] for s in slices) / joins / 1024}


def w_storm(args: argparse.Namespace, server: Server) -> list[Result]:
    slices, leave = asyncio.run(_storm(server, args.storm_connections, 50, server.tokens, args.storm_rooms))
    half = len(slices) // 2
    first, second = storm_totals(slices[:half]), storm_totals(slices[half:])
    _log_storm(server, "first half", first)
    _log_storm(server, "second half", second)
    log(f"  {server.name} storm: all {leave['leaves']:,} leave at once: server CPU {leave['cpu_ms']:.2f} ms per leave,"
        f" idle again after {leave['seconds']:.1f} s")
    members = slices[-1]["members"]
    note = (f"server CPU per join {first['cpu_ms']:.2f} ms (first half) -> {second['cpu_ms']:.2f} ms (second half);"
            f" second half: {second['frames']:.1f} frames and {second['kib']:.0f} KiB received per join,"
            f" server CPU {second['server_pct']:.0f}%, generator {second['generator_pct']:.0f}%;"
            f" all leaving at once: {leave['cpu_ms']:.2f} ms of server CPU per leave, idle after {leave['seconds']:.1f} s")
    where = "one room" if args.storm_rooms == 1 else f"{args.storm_rooms:,} rooms"
    return [Result(server.name, "storm", f"joins/s into {where} from {members // 2:,} to {members:,} members",
                   second["joins_per_s"], "/s", note, {"slices": slices})]


@contextmanager
def py_spy(args: argparse.Namespace, server: Server, workload: str) -> Iterator[None]:
    """--py-spy DIR: sample the server over the workload (raw collapsed stacks;
    summarise with bench/top_frames.py)."""
    if args.py_spy is None:
        yield
        return
    args.py_spy.mkdir(parents=True, exist_ok=True)
    out = args.py_spy / f"{server.name}-{workload}.txt"
    flags = args.py_spy_flags.split()
    rate = [] if {"-r", "--rate"} & set(flags) else ["-r", "200"]  # py-spy refuses a flag given twice
    # --native (C frames: the garbage collector, system calls) needs the
    # process paused at each sample; py-spy refuses it with --nonblocking.
    pause = [] if "--native" in flags else ["--nonblocking"]
    cmd = [str(Path(sys.executable).parent / "py-spy"), "record", *pause, *rate, "-p", str(server.pid), *flags,
           "-f", "raw", "-o", str(out)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the first connection
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
        log(f"  py-spy profile: {out}")


def gc_pauses(server: Server) -> dict[str, float] | None:
    """The server's garbage-collection pauses so far (``/metrics``, Dorm
    only): full collections, their seconds in all, and the objects frozen
    out of them (``DORM_GC_THAW_SECONDS``)."""
    if not server.name.startswith("dorm"):
        return None
    request = urllib.request.Request(f"http://{HOST}:{server.port}/metrics",
                                     # as a TLS proxy in front of it would (DJANGO_DEBUG is off)
                                     headers={"Authorization": f"Bearer {fanout.BENCH_METRICS_TOKEN}", "X-Forwarded-Proto": "https"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
    except OSError as exc:
        log(f"  (no gc pauses: /metrics {exc!r})")
        return None
    # Sample -> what it adds to (both young generations add to "young_s").
    wanted = {'dorm_process_gc_pause_seconds_count{generation="2"}': "full", 'dorm_process_gc_pause_seconds_sum{generation="2"}': "full_s",
              'dorm_process_gc_pause_seconds_sum{generation="1"}': "young_s", 'dorm_process_gc_pause_seconds_sum{generation="0"}': "young_s",
              'dorm_process_gc_pause_seconds_bucket{generation="2",le="0.1"}': "full_under_100ms",
              "dorm_process_gc_frozen_objects": "frozen", "dorm_process_gc_thaw_collected_objects_total": "thaw_collected"}
    found: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key in wanted:
            found[wanted[key]] = found.get(wanted[key], 0.0) + float(value)
    return found if "full" in found else None


def gc_note(before: dict[str, float] | None, after: dict[str, float] | None) -> str:
    if before is None or after is None:
        return ""
    full = int(after["full"] - before["full"])
    over = full - int(after["full_under_100ms"] - before["full_under_100ms"])
    return (f"gc: {full} full collections, {after['full_s'] - before['full_s']:.2f} s ({over} over 100 ms),"
            f" young {after['young_s'] - before['young_s']:.2f} s; {after['frozen']:,.0f} objects frozen")


def w_connect(args: argparse.Namespace, server: Server) -> list[Result]:
    gc0, overflows0 = gc_pauses(server), listen_overflows()
    with py_spy(args, server, "connect"):
        rate, failed, (server_cpu, gen_cpu), waits = asyncio.run(
            _connect(server, args.connections, args.connect_concurrency, server.tokens))
    waits.sort()
    overflows1 = listen_overflows()
    gc = gc_note(gc0, gc_pauses(server))
    auth = "HS256 token" if server.tokens else "no token check (?userId=)"
    # CPU per connection: the figure least disturbed by other load on a shared
    # machine (the rate is not: a server given half a core connects half as many).
    per_ms = server_cpu / 100 / rate * 1000 if rate else float("nan")
    cpu = f"server CPU {server_cpu:.0f}% ({per_ms:.2f} ms per connection), generator CPU {gen_cpu:.0f}%"
    if waits:  # with a fixed number in flight, a server below 100 % CPU is waiting on something per connection
        cpu += (f"; connect to welcome p50 {percentile(waits, 0.5):.1f} ms, p99 {percentile(waits, 0.99):.1f} ms"
                f" ({args.connect_concurrency} in flight)")
    if overflows0 is not None and overflows1 is not None:
        cpu += f"; {overflows1 - overflows0} SYNs dropped by a full accept queue"
    log(f"  {server.name} connect: {rate:,.0f}/s ({auth}), failed {failed}, {cpu}" + (f"; {gc}" if gc else ""))
    return [Result(server.name, "connect", "new connections/s with token auth", rate, "/s",
                   f"{auth}; failed {failed}; {cpu}" + (f"; {gc}" if gc else ""))]


async def _idle(server: Server, n: int) -> tuple[float, int, int, int, list[float | None]]:
    rec = Recorder()
    rooms = [f"i{secrets.token_hex(3)}-{i}" for i in range(max(1, n // 100))]
    pids = tree(server.pid)
    before = rss_kib(pids)
    opened = await open_welcomed(rec, HOST, server.port, [anonymous_path(rooms[i % len(rooms)], f"u{i}") for i in range(n)])
    clients = [c for c in opened if c is not None]
    await asyncio.sleep(3.0)  # join announcements, settle
    after = rss_kib(tree(server.pid))
    held = len(clients)
    # Objects frozen out of full collections (Dorm only): with the sockets
    # open, 3 s after they all closed (a closed socket's objects should
    # have left), and with them all back.
    frozen: list[float | None] = []

    async def note_frozen() -> None:
        gauges = await asyncio.to_thread(gc_pauses, server)
        frozen.append(None if gauges is None else gauges.get("frozen"))
        if gauges is not None:
            log(f"    (the thaws have freed {gauges.get('thaw_collected', 0):,.0f} objects so far)")

    await note_frozen()

    def close_all() -> None:
        for c in clients:
            if c.transport is not None:
                c.transport.close()

    # A reconnect: every client drops, waits 3 s and comes back. RSS after
    # it shows what the process still held of the first connections when the
    # second came (freed memory is reused; held memory adds up).
    close_all()
    await asyncio.sleep(3.0)
    await note_frozen()
    reopened = await open_welcomed(rec, HOST, server.port, [anonymous_path(rooms[i % len(rooms)], f"u{i}") for i in range(n)])
    clients = [c for c in reopened if c is not None]
    await asyncio.sleep(3.0)
    again = rss_kib(tree(server.pid))
    await note_frozen()
    close_all()
    await asyncio.sleep(2.0)
    return (after - before) / max(1, held), held, after, again, frozen


def w_idle(args: argparse.Namespace, server: Server) -> list[Result]:
    per, held, after, again, frozen = asyncio.run(_idle(server, args.idle_connections))
    gc = ""
    if None not in frozen:
        gc = "; objects frozen: open {:,.0f}, all closed {:,.0f}, all reopened {:,.0f}".format(*frozen)
    log(f"  {server.name} idle: {held:,} held, {per:.1f} KiB each, RSS {after / 1024:,.0f} MiB; {again / 1024:,.0f} MiB after all reconnected{gc}")
    return [Result(server.name, "idle", f"RSS KiB per idle connection ({args.idle_connections:,} opened)", per, "KiB",
                   f"{held:,} held, server RSS {after / 1024:,.0f} MiB; {again / 1024:,.0f} MiB after all reconnected 3 s later")]


async def _hibernation(server: Server, rooms_n: int, wakes: int, storm_n: int = 2000,
                       profile: Callable[[str], Any] = lambda part: nullcontext()) -> dict[str, Any]:
    rec = Recorder()
    rec.first_measured = 0
    prefix = f"h{secrets.token_hex(3)}"
    gc_open0 = await asyncio.to_thread(gc_pauses, server)
    t0 = time.perf_counter()
    opened = await open_welcomed(rec, HOST, server.port, [anonymous_path(f"{prefix}-{i}", "a") for i in range(rooms_n)])
    receivers = await open_welcomed(rec, HOST, server.port, [anonymous_path(f"{prefix}-{i}", "b") for i in range(wakes)])
    failed = opened.count(None) + receivers.count(None)
    open_s = time.perf_counter() - t0
    gc_open = gc_note(gc_open0, await asyncio.to_thread(gc_pauses, server))
    await asyncio.sleep(3.0 + 4.0)  # hibernate after 3 s of no items, plus the snapshots
    with profile("idle"):
        cpu0, w0 = tree_cpu(server.pid), time.perf_counter()
        await asyncio.sleep(10.0)
        idle_cpu = (tree_cpu(server.pid) - cpu0) / (time.perf_counter() - w0) * 100
    rss = rss_kib(tree(server.pid))
    lat = []
    for i in range(wakes):
        c = opened[i]
        if c is None or receivers[i] is None:
            continue
        got = len(rec.latencies_ms)
        n = len(rec.send_times)
        rec.deliveries.append(0)
        rec.send_times.append(time.perf_counter())
        c.send_text(b'{"type":"draw","id":"%d","payload":{"x":1,"y":2,"k":"%d","t":"%d"}}' % (n, n, time.perf_counter_ns()))
        deadline = time.perf_counter() + 5
        while len(rec.latencies_ms) == got and time.perf_counter() < deadline:
            await asyncio.sleep(0.0005)
        if len(rec.latencies_ms) > got:
            lat.append(rec.latencies_ms[-1])
    gc_storm0 = await asyncio.to_thread(gc_pauses, server)
    with profile("wake-storm"):
        storm = await _wake_storm(server, rec, [c for c in opened[wakes:wakes + storm_n] if c is not None])
    storm["gc"] = gc_note(gc_storm0, await asyncio.to_thread(gc_pauses, server))
    for c in list(opened) + list(receivers):
        if c is not None and c.transport is not None:
            c.transport.close()
    await asyncio.sleep(2.0)
    return {"rooms": rooms_n - failed, "open_s": open_s, "idle_cpu_pct": idle_cpu, "rss_kib": rss, "wake_ms": lat, "storm": storm,
            "gc_open": gc_open}


async def _wake_storm(server: Server, rec: Recorder, clients: list[Client], concurrency: int = 50) -> dict[str, Any]:
    """Many hibernated rooms woken at once (a draw into each, ``concurrency``
    at a time): wakes/s, server CPU per wake, and each draw's ack latency
    (the room's load, the commit, the ack)."""
    first_ack = len(rec.ack_latencies_ms)
    rec.first_measured = len(rec.send_times)
    cpu0, t0 = tree_cpu(server.pid), time.perf_counter()
    for start in range(0, len(clients), concurrency):
        wave = clients[start:start + concurrency]
        target = rec.acks + len(wave)
        for c in wave:
            n = len(rec.send_times)
            rec.deliveries.append(0)
            rec.send_times.append(time.perf_counter())
            c.send_text(b'{"type":"draw","id":"%d","payload":{"x":1,"y":2}}' % n)
        deadline = time.perf_counter() + 10
        while rec.acks < target and time.perf_counter() < deadline:
            await asyncio.sleep(0.0005)
    elapsed = time.perf_counter() - t0
    acks = sorted(rec.ack_latencies_ms[first_ack:])
    return {"wakes": len(acks), "per_s": len(acks) / elapsed, "cpu_ms": 1000 * (tree_cpu(server.pid) - cpu0) / max(1, len(acks)),
            "p50_ms": statistics.median(acks) if acks else float("nan"),
            "p99_ms": acks[int(0.99 * (len(acks) - 1))] if acks else float("nan")}


def w_hibernation(args: argparse.Namespace, server: Server) -> list[Result]:
    d = asyncio.run(_hibernation(server, args.hibernated_rooms, 20, profile=lambda part: py_spy(args, server, f"hibernation-{part}")))
    lat = sorted(d["wake_ms"])
    p50 = statistics.median(lat) if lat else None
    log(f"  {server.name} hibernation: {d['rooms']:,} rooms open in {d['open_s']:.0f} s, idle CPU {d['idle_cpu_pct']:.2f}%,"
        f" wake p50 {fanout.fmt(p50)} ms max {fanout.fmt(lat[-1] if lat else None)} ms ({len(lat)} wakes)"
        + (f"; opening them, {d['gc_open']}" if d["gc_open"] else ""))
    st = d["storm"]
    log(f"  {server.name} wake storm: {st['wakes']:,} rooms woken 50 at a time, {st['per_s']:,.0f} wakes/s,"
        f" server CPU {st['cpu_ms']:.2f} ms per wake, ack p50 {st['p50_ms']:.1f} ms p99 {st['p99_ms']:.1f} ms"
        + (f"; {st['gc']}" if st["gc"] else ""))
    note = f"{d['rooms']:,} rooms with an open connection each, opened in {d['open_s']:.0f} s, server RSS {d['rss_kib'] / 1024:,.0f} MiB"
    if d["gc_open"]:
        note += f"; opening them, {d['gc_open']}"
    return [
        Result(server.name, "hibernation", "server CPU % while idle (10,000 hibernated rooms)", d["idle_cpu_pct"], "%", note),
        Result(server.name, "hibernation", "wake to first broadcast, p50 ms", p50, "ms",
               f"max {fanout.fmt(lat[-1] if lat else None)} ms over {len(lat)} rooms"),
        Result(server.name, "hibernation", "wake storm: hibernated rooms woken per second", st["per_s"], "/s",
               f"{st['wakes']:,} rooms, 50 at a time; server CPU {st['cpu_ms']:.2f} ms per wake;"
               f" ack p50 {st['p50_ms']:.1f} ms, p99 {st['p99_ms']:.1f} ms" + (f"; {st['gc']}" if st["gc"] else "")),
    ]


WORKLOADS: dict[str, tuple[Callable[[argparse.Namespace, Server], list[Result]], tuple[str, ...]]] = {
    "fanout": (w_fanout, ("dorm", "naive", "node-ws", "miniflare")),
    "rooms": (w_rooms, ("dorm", "naive", "node-ws", "miniflare")),
    "durable": (w_durable, ("dorm", "dorm-pg")),
    "connect": (w_connect, ("dorm", "dorm-uvicorn", "node-ws", "miniflare")),
    "storm": (w_storm, ("dorm", "node-ws")),
    "idle": (w_idle, ("dorm", "dorm-uvicorn", "naive", "node-ws", "miniflare")),
    "hibernation": (w_hibernation, ("dorm-hibernate",)),
}

# Workloads measured on a fresh server process: the idle one's figure is the
# process's RSS growth per socket, and a process that ran other workloads
# first has freed memory for the sockets to reuse (a whole run once printed
# 6.2 KiB per idle socket where a fresh process measures 15.5).
OWN_PROCESS = frozenset({"idle"})

# The targets, per metric: (comparison, target, what it is)
TARGETS = {
    "fanout": (">=", "miniflare", "at least the Durable Objects runtime's, and >= 10x naive"),
    "fanout-9800": ("<=", None, "p50 < 1 ms, p99 < 5 ms"),
    "rooms": ("<=", None, "p99 < 5 ms"),
    "durable": (">=", None, ">= 10,000/s SQLite, >= 5,000/s PostgreSQL"),
    "connect": (">=", None, ">= 2,000/s"),
    "idle": ("<=", None, "<= 20 KiB at 15,000 held"),
    "hibernation": ("<=", None, "zero CPU idle; wake < 20 ms"),
}


def table(results: list[Result]) -> str:
    lines = ["| workload | metric | server | value | vs node-ws | vs miniflare | vs naive | target | note |", "|---|---|---|---|---|---|---|---|---|"]
    refs = {(r.workload, r.metric, r.server): r.value for r in results}

    def ratio(r: Result, ref: str) -> str:
        other = refs.get((r.workload, r.metric, ref))
        if r.server == ref or other in (None, 0) or r.value is None:
            return "-"
        return f"{r.value / other:.2f}x"

    for r in results:
        value = "-" if r.value is None else (f"{r.value:,.0f}" if abs(r.value) >= 100 else f"{r.value:,.2f}")
        target = TARGETS.get(r.workload, ("", None, ""))[2] if r.server.startswith("dorm") else ""
        lines.append(f"| {r.workload} | {r.metric} | {r.server} | {value} {r.unit} | {ratio(r, 'node-ws')} | {ratio(r, 'miniflare')}"
                     f" | {ratio(r, 'naive')} | {target} | {r.note} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="dorm,dorm-pg,dorm-hibernate,naive,node-ws,miniflare")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--fanout-rates", default=FANOUT_RATES)
    p.add_argument("--window", type=float, default=5.0)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--max-loss-pct", type=float, default=1.0)
    p.add_argument("--max-p99-ms", type=float, default=1000.0)
    p.add_argument("--connections", type=int, default=2000, help="for 'connect' (default: %(default)s)")
    p.add_argument("--connect-concurrency", type=int, default=50,
                   help="for 'connect': connections in flight at once (default: %(default)s)")
    p.add_argument("--storm-connections", type=int, default=5000, help="for 'storm' (default: %(default)s)")
    p.add_argument("--storm-rooms", type=int, default=1,
                   help="for 'storm': spread the joins over this many rooms, a reconnect storm after a deploy (default: %(default)s)")
    p.add_argument("--idle-connections", type=int, default=15000, help="for 'idle' (default: %(default)s)")
    p.add_argument("--hibernated-rooms", type=int, default=10000, help="for 'hibernation' (default: %(default)s)")
    p.add_argument("--json", type=Path)
    p.add_argument("--server-log-dir", type=Path)
    p.add_argument("--py-spy", type=Path, metavar="DIR", help="profile the server over 'connect', 'durable', and the idle window and the wake storm of 'hibernation' (py-spy raw stacks)")
    p.add_argument("--py-spy-flags", default="", help="more py-spy record flags, e.g. '--idle --threads' or '--rate 1000'")
    args = p.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.workloads = [w for w in args.workloads.split(",") if w]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile()
    _, pinning = fanout.pin_generator()
    load0 = os.getloadavg()
    log(f"suite: {pinning}; open files {nofile}; load average {load0[0]:.2f}")
    log_dir = Path(tempfile.mkdtemp(prefix="dorm-suite-")) if args.server_log_dir is None else args.server_log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    skipped: list[str] = []
    started = time.time()
    needs_pg = "dorm-pg" in args.servers and any("dorm-pg" in WORKLOADS[w][1] for w in args.workloads)
    with tempfile.TemporaryDirectory(prefix="dorm-suite-db-") as db_dir, (pg_database() if needs_pg else _null()) as pg_url:
        for name in args.servers:
            mine = [w for w in args.workloads if name in WORKLOADS[w][1]]
            # One process for the rest, one of its own for each workload in
            # OWN_PROCESS.
            runs = [[w for w in mine if w not in OWN_PROCESS]] + [[w] for w in mine if w in OWN_PROCESS]
            for run in (r for r in runs if r):
                try:
                    with start_server(name, log_dir, Path(db_dir), pg_url, {}) as server:
                        log(f"{name}: listening on {server.port}, pid {server.pid} ({', '.join(run)})")
                        for w in run:
                            try:
                                results += WORKLOADS[w][0](args, server)
                            except Exception as exc:  # noqa: BLE001 - one failed workload must not hide the rest
                                log(f"  {name} {w}: failed: {exc!r}")
                                skipped.append(f"{name} {w}: {exc!r}")
                except Exception as exc:  # noqa: BLE001
                    log(f"{name}: could not start, skipped: {exc!r}"[:2000])
                    skipped.append(f"{name}: could not start ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
                    break
    if args.server_log_dir is None:
        shutil.rmtree(log_dir, ignore_errors=True)
    load1 = os.getloadavg()
    print(table(results))
    if skipped:
        print("\nskipped: " + "; ".join(skipped))
    print(f"\nload average {load0[0]:.2f} before, {load1[0]:.2f} after; revision {fanout.git_revision()}")
    if args.json is not None:
        meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "argv": sys.argv,
                "revision": fanout.git_revision(), "pinning": pinning, "load_average": [load0, load1]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": [r.__dict__ for r in results], "skipped": skipped}, indent=2))
    return 0 if results else 1


@contextmanager
def _null() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    sys.exit(main())
