"""Low-rate latency and idle CPU, several server variants in the same run.

    .venv/bin/python bench/latency.py --rounds 3 \\
        --variant full='daphne' --variant normal='daphne SQLITE_SYNCHRONOUS=NORMAL' \\
        --variant uvi='uvicorn'
    .venv/bin/python bench/latency.py --workloads idle --variant before='daphne @HEAD~3' --variant after='daphne'

A variant is ``NAME='SERVER [KEY=VALUE ...] [--server-flag ...] [@REV]'``:
``daphne`` or ``uvicorn``; ``KEY=VALUE`` go to the server's environment;
words starting with ``--`` are passed to the server's command line (daphne's
``--ping-interval 600``; by default both servers ping every 300 s, as
``make run``); ``@REV`` runs the code of that revision (``git
archive`` into a temporary directory). Every variant is started once, on its
own fresh SQLite file, pinned to core 0 (the generator to core 1), and the
steps then alternate between the variants round after round, so that each
variant meets the same machine load on average. Nothing is rate-limited
(the generator is one address).

Workloads (issue 12's latency targets and idle CPU):

- ``fanout``: one room, 50 clients, 5 senders, 200 draws/s (9,800
  deliveries/s offered): p50 / p99 of the deliveries.
- ``rooms``: 100 rooms x 10 clients, one sender per room at 2 msg/s: p99.
- ``idle``: N rooms with one open connection each, hibernated
  (DORM_HIBERNATE_AFTER_SECONDS=3), then the server's CPU (utime + stime of
  the whole process, /proc/<pid>/stat) over ``--idle-seconds``; the idle
  variants run one after the other (each holds N sockets), in each round.
  With ``--idle-heartbeat S`` every client instead does what the shipped
  clients do while nothing happens (clients/js/dorm.js, ``heartbeatMs``):
  a ``ping`` every S seconds (the clients spread evenly over the period;
  ``--idle-keepalive heartbeat+ping``, or ``BENCH_KEEPALIVE=heartbeat+ping``
  in one variant, sends a ``heartbeat`` before each ping, as the clients did
  before 2026-11-26); the row then also has the server's CPU per keepalive
  (its frames and the pong), and the user-space part of it (utime: what a
  change to Python code moves; the system calls are the rest).

Besides wall-clock latency, every row has the server's CPU time per message
(us/msg), which the other load on a shared machine distorts least.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fanout
from _loadgen import Recorder, user_seconds
from _rooms import Measure, RoomsConfig, anonymous_path, open_welcomed, run_rooms_step
from cluster import source_tree
from qa_spike import cpu_and_wait
from suite import raise_nofile, tree, tree_cpu

HOST = fanout.HOST


log = fanout.log


@dataclass
class Variant:
    name: str
    server: str
    env: dict[str, str]
    flags: list[str]
    rev: str | None
    port: int = 0
    pid: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def parse_variant(spec: str) -> Variant:
    name, _, rest = spec.partition("=")
    words = shlex.split(rest)
    if not name or not words or words[0] not in ("daphne", "uvicorn"):
        raise SystemExit(f"bad --variant {spec!r}: NAME='daphne|uvicorn [K=V ...] [--flag ...] [@REV]'")
    env, flags, rev = {}, [], None
    for w in words[1:]:
        if w.startswith("@"):
            rev = w[1:]
        elif w.startswith("--") or "=" not in w:
            flags.append(w)  # a server flag or its value
        else:
            k, v = w.split("=", 1)
            env[k] = v
    return Variant(name, words[0], env, flags, rev)


@contextmanager
def start(v: Variant, log_dir: Path, db_dir: Path, extra_env: dict[str, str]) -> Iterator[Variant]:
    with ExitStack() as stack:
        root = fanout.REPO if v.rev is None else stack.enter_context(source_tree(v.rev))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "config.settings"}
        env["PYTHONPATH"] = str(root)
        env.update(fanout.DORM_ENV, SQLITE_PATH=str(db_dir / f"{v.name}.sqlite3"), **extra_env, **v.env)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=root, env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=300)
        port = fanout.free_port()
        # Server pings as `make run` / `make run-uvicorn` (WS_PING_INTERVAL 300 s,
        # WS_PING_TIMEOUT 30 s); a variant's own flags come after and win. The
        # servers' own default, 20 s, is 500 pings/s at 10,000 idle sockets.
        if v.server == "daphne":
            cmd = [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), "--websocket_timeout", "-1",
                   "--ping-interval", "300", "--ping-timeout", "30", *v.flags, "config.asgi:application"]
        else:
            cmd = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", HOST, "--port", str(port),
                   "--ws", "websockets-sansio", "--ws-max-size", "1048576", "--log-level", "warning", "--no-access-log",
                   "--ws-ping-interval", "300", "--ws-ping-timeout", "30", *v.flags]
        log_path = log_dir / f"{v.name}.log"
        proc = fanout.start_pinned(cmd, root, env, log_path)
        try:
            fanout.wait_listening(port, proc, log_path)
            v.port, v.pid = port, proc.pid
            yield v
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


SPIES: list[subprocess.Popen[bytes]] = []


def measure(v: Variant, args: argparse.Namespace, workload: str, rnd: int) -> Measure:
    m = Measure(server_pids=tuple(tree(v.pid)), cores=(fanout.SERVER_CORE, fanout.GENERATOR_CORE) if fanout.PINNED else ())
    if args.py_spy is not None and workload != "idle":
        out = args.py_spy / f"{workload}-{v.name}-r{rnd}.txt"

        def spy() -> None:
            args.py_spy.mkdir(parents=True, exist_ok=True)
            SPIES.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "-r", "200", "-d",
                 str(int(args.window)), "--format", "raw", "--pid", str(v.pid), "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        m.at_window = spy
    return m


def step_row(v: Variant, workload: str, r: Any, rnd: int) -> dict[str, Any]:
    msgs = r.sent_messages_per_s
    us_per_msg = (r.server_cpu_pct or 0) / 100 * 1e6 / msgs if msgs else None
    row = {"variant": v.name, "workload": workload, "round": rnd, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
           "ack_p50_ms": r.ack_p50_ms, "lost_pct": r.lost_pct, "server_cpu_pct": r.server_cpu_pct, "us_per_msg": us_per_msg,
           "other_pct": r.other_server_core_pct, "load": os.getloadavg()[0]}
    log(f"  round {rnd} {workload:7} {v.name:12} p50 {fanout.fmt(r.p50_ms, 2)} p99 {fanout.fmt(r.p99_ms, 2)} ms,"
        f" lost {r.lost_pct:.2f}%, server CPU {fanout.fmt(r.server_cpu_pct, 1)}% ({fanout.fmt(us_per_msg, 0)} us/msg),"
        f" other {fanout.fmt(r.other_server_core_pct, 0)}%, load {row['load']:.2f}")
    return row


def w_fanout(v: Variant, args: argparse.Namespace, rnd: int) -> dict[str, Any]:
    cfg = RoomsConfig(host=HOST, ports=(v.port,), rooms=(f"f{secrets.token_hex(4)}",), message_rate=args.fanout_rate,
                      clients=50, senders=5, window_s=args.window)
    return step_row(v, "fanout", asyncio.run(run_rooms_step(cfg, measure(v, args, "fanout", rnd))), rnd)


def w_rooms(v: Variant, args: argparse.Namespace, rnd: int) -> dict[str, Any]:
    cfg = RoomsConfig(host=HOST, ports=(v.port,), rooms=tuple(f"m{secrets.token_hex(3)}-{i}" for i in range(100)),
                      message_rate=200.0, clients=10, senders=1, window_s=args.window)
    return step_row(v, "rooms", asyncio.run(run_rooms_step(cfg, measure(v, args, "rooms", rnd))), rnd)


def tree_user(pid: int) -> float:
    """User-space CPU seconds of the process tree (utime)."""
    return sum(user_seconds(p) or 0.0 for p in tree(pid))


def tree_ran(pid: int) -> float:
    """Seconds the process tree's threads ran (schedstat: nanoseconds)."""
    return sum(cpu_and_wait(p)[0] for p in tree(pid))


HEARTBEAT = b'{"type":"heartbeat"}'


KEEPALIVES = ("ping", "heartbeat+ping")


class Keepalives:
    """What the shipped clients send while nothing happens: every ``period``
    seconds a ``ping`` per client (clients/js/dorm.js), with ``frames`` =
    "heartbeat+ping" a ``heartbeat`` before it; the clients spread evenly over
    the period."""

    def __init__(self, clients: list[Any], period: float, frames: str = "ping") -> None:
        self.clients = [c for c in clients if c is not None]
        self.period = period
        self.heartbeat = frames == "heartbeat+ping"
        self.sent = 0  # keepalives (a ping, or a heartbeat and a ping)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        n, tick = len(self.clients), 0.05
        if not n:
            return
        start, done = time.perf_counter(), 0
        while True:
            await asyncio.sleep(tick)
            due = int((time.perf_counter() - start) / self.period * n)
            while done < due:
                c = self.clients[done % n]
                done += 1
                if c.transport is None or c.transport.is_closing():
                    continue
                if self.heartbeat:
                    c.send_text(HEARTBEAT)
                c.send_text(b'{"type":"ping","payload":{"t":%d}}' % time.time_ns())
                self.sent += 1

    def stop(self) -> None:
        self.task.cancel()


async def _idle(v: Variant, n: int, seconds: float, settle: float, py_spy: Path | None,
                strace: Path | None = None, perf: Path | None = None, heartbeat: float = 0.0,
                keepalive: str = "ping") -> dict[str, Any]:
    rec = Recorder()
    prefix = f"h{secrets.token_hex(3)}"
    t0 = time.perf_counter()
    clients = await open_welcomed(rec, HOST, v.port, [anonymous_path(f"{prefix}-{i}", "a") for i in range(n)])
    failed = clients.count(None)
    open_s = time.perf_counter() - t0
    keepalives = Keepalives(clients, heartbeat, keepalive) if heartbeat > 0 else None
    await asyncio.sleep(settle)  # hibernate after 3 s without items, the sleep snapshots, the billing flush
    spy = None
    if py_spy is not None:
        py_spy.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(v.pid), "--idle",
                                "--rate", "100", "--duration", str(int(seconds)), "--format", "raw",
                                "--output", str(py_spy / f"idle-{v.name}.txt")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tracer = None
    if strace is not None:
        # What wakes an idle server: its system calls per thread, counted
        # (strace -c); costs CPU itself, so the idle figure of such a run is high.
        strace.mkdir(parents=True, exist_ok=True)
        tracer = subprocess.Popen(["strace", "-f", "-c", "-S", "calls", "-o", str(strace / f"idle-{v.name}.txt"),
                                   "-p", str(v.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # utime + stime are counted in scheduler ticks (10 ms); the threads'
    # run time from schedstat is in nanoseconds, the figure to read when
    # what is left is a few milliseconds per 10 s.
    perf_rec = None
    if perf is not None:
        # Where the CPU goes, kernel included (py-spy sees Python frames only).
        perf.mkdir(parents=True, exist_ok=True)
        perf_rec = subprocess.Popen(["perf", "record", "-g", "-p", str(v.pid), "-o", str(perf / f"idle-{v.name}.data"),
                                     "--", "sleep", str(int(seconds))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu0, ran0, w0 = tree_cpu(v.pid), tree_ran(v.pid), time.perf_counter()
    user0 = tree_user(v.pid)
    sent0 = keepalives.sent if keepalives is not None else 0
    per_10s, ran_per_10s = [], []
    last, last_ran = cpu0, ran0
    while time.perf_counter() - w0 < seconds:
        await asyncio.sleep(min(10.0, seconds - (time.perf_counter() - w0)))
        now, ran = tree_cpu(v.pid), tree_ran(v.pid)
        per_10s.append(round((now - last) * 1000))
        ran_per_10s.append(round((ran - last_ran) * 1000, 1))
        last, last_ran = now, ran
    wall = time.perf_counter() - w0
    idle_pct = (last - cpu0) / wall * 100
    ran_pct = (last_ran - ran0) / wall * 100
    user = tree_user(v.pid) - user0
    keepalive_us = keepalive_user_us = None
    if keepalives is not None:
        sent = keepalives.sent - sent0
        keepalive_us = (last_ran - ran0) / sent * 1e6 if sent else None
        keepalive_user_us = user / sent * 1e6 if sent else None
        keepalives.stop()
    if spy is not None:
        spy.wait(timeout=seconds + 30)
    if perf_rec is not None:
        perf_rec.wait(timeout=seconds + 60)
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    for c in clients:
        if c is not None and c.transport is not None:
            c.transport.close()
    await asyncio.sleep(3.0)
    return {"held": n - failed, "open_s": open_s, "idle_cpu_pct": idle_pct, "cpu_ms_per_10s": per_10s,
            "ran_pct": ran_pct, "ran_ms_per_10s": ran_per_10s, "keepalive_us": keepalive_us,
            "user_pct": user / wall * 100, "keepalive_user_us": keepalive_user_us}


def w_idle(v: Variant, args: argparse.Namespace, rnd: int) -> dict[str, Any]:
    keepalive = v.env.get("BENCH_KEEPALIVE", args.idle_keepalive)  # the generator's, per variant
    if keepalive not in KEEPALIVES:
        raise SystemExit(f"BENCH_KEEPALIVE / --idle-keepalive: one of {', '.join(KEEPALIVES)}")
    d = asyncio.run(_idle(v, args.idle_rooms, args.idle_seconds, args.idle_settle, args.py_spy, args.strace, args.perf,
                          args.idle_heartbeat, keepalive))
    row = {"variant": v.name, "workload": "idle", "round": rnd, **d, "load": os.getloadavg()[0]}
    per_keepalive = "" if d["keepalive_us"] is None else (
        f"; {d['keepalive_us']:.1f} us of server CPU per keepalive ({d['keepalive_user_us']:.1f} in user space)")
    log(f"  round {rnd} idle    {v.name:12} {d['held']:,} rooms held (opened in {d['open_s']:.0f} s): idle CPU"
        f" {d['idle_cpu_pct']:.3f}% of a core over {args.idle_seconds:.0f} s; CPU ms per 10 s {d['cpu_ms_per_10s']};"
        f" ran (schedstat) {d['ran_pct']:.3f}%, ms per 10 s {d['ran_ms_per_10s']}; user {d['user_pct']:.3f}%{per_keepalive};"
        f" load {row['load']:.2f}")
    return row


WORKLOADS = {"fanout": w_fanout, "rooms": w_rooms, "idle": w_idle}


def summary(variants: list[Variant]) -> str:
    lines = ["| workload | variant | runs | p50 ms (median) | p99 ms (median) | p99 ms (each run) | server CPU us/msg (median) | other load % (each run) |",
             "|---|---|---|---|---|---|---|---|"]
    idle = ["| variant | runs | idle CPU % of a core (each run) | CPU ms per 10 s | ran % (schedstat, each run) | ran ms per 10 s | us per keepalive | of which user space |",
            "|---|---|---|---|---|---|---|---|"]
    for w in ("fanout", "rooms"):
        for v in variants:
            rows = [r for r in v.rows if r["workload"] == w]
            if not rows:
                continue
            med = lambda k: statistics.median([r[k] for r in rows if r[k] is not None])  # noqa: E731
            lines.append(f"| {w} | {v.name} | {len(rows)} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f}"
                         f" | {', '.join(fanout.fmt(r['p99_ms'], 1) for r in rows)} | {med('us_per_msg'):.0f}"
                         f" | {', '.join(fanout.fmt(r['other_pct'], 0) for r in rows)} |")
    for v in variants:
        rows = [r for r in v.rows if r["workload"] == "idle"]
        if rows:
            idle.append(f"| {v.name} | {len(rows)} | {', '.join(format(r['idle_cpu_pct'], '.3f') for r in rows)}"
                        f" | {'; '.join(str(r['cpu_ms_per_10s']) for r in rows)}"
                        f" | {', '.join(format(r.get('ran_pct', float('nan')), '.3f') for r in rows)}"
                        f" | {'; '.join(str(r.get('ran_ms_per_10s')) for r in rows)}"
                        f" | {', '.join(fanout.fmt(r.get('keepalive_us'), 1) for r in rows)}"
                        f" | {', '.join(fanout.fmt(r.get('keepalive_user_us'), 1) for r in rows)} |")
    out = "\n".join(lines)
    if len(idle) > 2:
        out += "\n\n" + "\n".join(idle)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", default=[], help="NAME='daphne|uvicorn [K=V ...] [--flag v] [@REV]'")
    p.add_argument("--workloads", default="fanout,rooms")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=5.0)
    p.add_argument("--fanout-rate", type=float, default=200.0, help="draws/s in the one room (default: 200 = 9,800 deliveries/s)")
    p.add_argument("--idle-rooms", type=int, default=10_000)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    # The idle clients never heartbeat, so 60 s (DORM_PRESENCE_TTL_SECONDS)
    # after its last frame each socket is marked offline, which wakes its
    # room once to say so. Opening 10,000 rooms takes minutes, so that wave
    # runs well after the last room opened: the window starts after it.
    p.add_argument("--idle-settle", type=float, default=80.0,
                   help="seconds between the last room opened and the idle window (default: %(default)s: past the"
                   " presence TTL of 60 s, the sweep that follows and the billing flush of the rooms' last minute)")
    p.add_argument("--idle-heartbeat", type=float, default=0.0, metavar="S",
                   help="idle clients send a keepalive (--idle-keepalive) every S seconds, as the shipped clients (15);"
                   " default: silent clients")
    p.add_argument("--idle-keepalive", default="ping", choices=KEEPALIVES,
                   help="what each idle client sends every --idle-heartbeat seconds (default: %(default)s, as the shipped clients)")
    p.add_argument("--strace", type=Path, help="count each idle window's system calls with strace -c -f into DIR")
    p.add_argument("--py-spy", type=Path, help="record each idle window with py-spy (raw collapsed stacks) into DIR")
    p.add_argument("--perf", type=Path, help="record each idle window with perf record -g (kernel too) into DIR")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    variants = [parse_variant(s) for s in (args.variant or ["default=daphne"])]
    workloads = [w for w in args.workloads.split(",") if w]
    nofile = raise_nofile()
    _, pinning = fanout.pin_generator()
    log(f"latency: {pinning}; open files {nofile}; load average {os.getloadavg()}; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    extra = {"DORM_HIBERNATE_AFTER_SECONDS": "3"} if "idle" in workloads else {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dorm-latency-") as tmp, ExitStack() as stack:
        for v in variants:
            stack.enter_context(start(v, Path(tmp), Path(tmp), extra))
            log(f"{v.name}: {v.server} {v.env} {v.flags} rev {v.rev or 'worktree'}, port {v.port}, pid {v.pid}")
        for rnd in range(1, args.rounds + 1):
            order = variants if rnd % 2 else list(reversed(variants))
            for w in workloads:
                for v in order:
                    try:
                        v.rows.append(WORKLOADS[w](v, args, rnd))
                    except Exception as exc:  # noqa: BLE001
                        log(f"  round {rnd} {w} {v.name}: failed: {exc!r}")
    for spy in SPIES:
        spy.wait(timeout=60)
    print(summary(variants))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))}-{time.strftime('%H:%M UTC', time.gmtime())};"
          f" load average {os.getloadavg()[0]:.2f} at the end; revision {fanout.git_revision()}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"argv": sys.argv, "started": started, "rows": [r for v in variants for r in v.rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
