"""Distributed-mode fan-out benchmark (issue 3): Dorm on N processes, and the
Channels tutorial pattern on channels-redis' two layers, in the same run.

    .venv/bin/python bench/cluster.py                      # every target, both workloads
    .venv/bin/python bench/cluster.py --targets dorm-1p,dorm-2p --workloads room

Targets (all on daphne unless --server uvicorn):

- ``dorm-1p``: Dorm in the distributed mode (a fresh PostgreSQL database
  created for the run and dropped after it, Redis on an unused database
  number), one process pinned to core 0, the generator pinned to core 1.
- ``dorm-2p``: the same with two processes, pinned to core 0 and core 1; a
  room's clients alternate between them. The generator is not pinned and
  shares the two cores with the servers (the machine has two): this
  understates the two-process figure, and the "gen CPU" column says by how much.
- ``naive-redis-2p``, ``naive-pubsub-2p``: the Channels tutorial consumer
  (bench/naive: ``group_send`` per frame) on RedisChannelLayer and on
  RedisPubSubChannelLayer, two processes pinned as dorm-2p.
  ``naive-redis-1p``, ``naive-pubsub-1p``: one process (not run by default).

Workloads: ``room`` (one room, 50 clients, 5 senders: each message due to the
49 others) and ``rooms`` (100 rooms of 10 clients, 1 sender each: each message
due to 9). Each runs a ladder of offered msg/s (over all senders), stopping as
bench/fanout.py does. Redis and the PostgreSQL backends of the bench's
database run wherever the kernel puts them; their CPU is the "infra" column
and is not counted as disturbance. Progress goes to stderr, the tables to
stdout, --json PATH writes every row with the run's metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import fanout
from _loadgen import StepResult
from _rooms import Measure, RoomsConfig, run_rooms_step

REPO = fanout.REPO
HOST = fanout.HOST
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_HOST_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
DISTURBED_PCT = fanout.DISTURBED_PCT
DORM_ENV = fanout.DORM_ENV  # production-like, limits off (see there)


@dataclass(frozen=True)
class Target:
    name: str
    app: str
    settings: str
    processes: int
    env: dict[str, str]
    repo: Path = REPO  # the source tree the servers run (NAME@REV: that revision's)


TARGETS = {
    t.name: t
    for t in (
        Target("dorm-1p", "config.asgi:application", "config.settings", 1, {}),
        Target("dorm-2p", "config.asgi:application", "config.settings", 2, {}),
        Target("naive-redis-1p", "bench.naive.asgi:application", "bench.naive.settings", 1, {"NAIVE_LAYER": "redis"}),
        Target("naive-pubsub-1p", "bench.naive.asgi:application", "bench.naive.settings", 1, {"NAIVE_LAYER": "pubsub"}),
        Target("naive-redis-2p", "bench.naive.asgi:application", "bench.naive.settings", 2, {"NAIVE_LAYER": "redis"}),
        Target("naive-pubsub-2p", "bench.naive.asgi:application", "bench.naive.settings", 2, {"NAIVE_LAYER": "pubsub"}),
    )
}
DEFAULT_TARGETS = "dorm-1p,dorm-2p,naive-redis-2p,naive-pubsub-2p"


@dataclass(frozen=True)
class Workload:
    name: str
    rooms: int
    clients: int
    senders: int
    rates: str  # default ladder, msg/s over all senders


WORKLOADS = {
    w.name: w
    for w in (
        Workload("room", 1, 50, 5, "200,500,1000,2000,3000,4000,6000"),
        Workload("rooms", 100, 10, 1, "200,1000,2000,5000,10000,20000"),
    )
}


log = fanout.log


@dataclass
class Row:
    target: str
    workload: str
    step: str
    result: StepResult
    infra_cpu_pct: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "workload": self.workload,
            "step": self.step,
            "infra_cpu_pct": self.infra_cpu_pct,
            **self.result.as_dict(),
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=DEFAULT_TARGETS, help=f"of: {', '.join(TARGETS)} (default: %(default)s)")
    p.add_argument("--workloads", default="room,rooms", help=f"of: {', '.join(WORKLOADS)} (default: %(default)s)")
    p.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    for w in WORKLOADS.values():
        p.add_argument(f"--{w.name}-rates", default=w.rates, help=f"ladder of {w.name!r}, msg/s (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--window", type=float, default=5.0)
    p.add_argument("--drain", type=float, default=10.0)
    p.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed step (default: %(default)s)")
    p.add_argument("--max-loss-pct", type=float, default=1.0)
    p.add_argument("--max-p99-ms", type=float, default=1000.0)
    p.add_argument("--redis-db", type=int, default=14, help="an unused Redis database number (default: %(default)s)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for Dorm")
    p.add_argument("--json", type=Path, metavar="PATH")
    p.add_argument("--py-spy", type=Path, metavar="DIR", help="profile each server over each step (py-spy, collapsed stacks)")
    p.add_argument("--server-log-dir", type=Path, metavar="DIR")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for t in args.targets:
        if t.split("@", 1)[0] not in TARGETS:
            p.error(f"unknown target {t!r}")
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    args.env = dict(kv.split("=", 1) for kv in args.env)
    return args


# -- infrastructure --------------------------------------------------------------------


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database for the run, dropped afterwards; yields its URL."""
    import psycopg

    name = f"dorm_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    log(f"database {name} created")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"database {name} dropped")


def redis_call(*cmd: str, db: int = 0) -> str:
    host, port = REDIS_HOST_URL.split("//", 1)[1].split(":")
    out = subprocess.run(
        ["redis-cli", "-h", host, "-p", port, "-n", str(db), *cmd], capture_output=True, text=True, timeout=10
    )
    return out.stdout


@contextmanager
def private_redis_db(db: int) -> Iterator[str]:
    """A Redis database number nobody uses (checked empty), flushed after the run."""
    keys = redis_call("DBSIZE", db=db).strip()
    if keys != "0":
        raise RuntimeError(f"redis db {db} holds {keys} keys: pick an unused one with --redis-db")
    try:
        yield f"{REDIS_HOST_URL}/{db}"
    finally:
        redis_call("FLUSHDB", db=db)


def redis_pid() -> int | None:
    for line in redis_call("INFO", "server").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":")[1])
    return None


def pg_backend_pids(db_url: str) -> tuple[int, ...]:
    import psycopg

    name = db_url.rsplit("/", 1)[1]
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,)
            ).fetchall()
    except Exception:
        return ()
    return tuple(int(r[0]) for r in rows)


# -- servers ---------------------------------------------------------------------------


@contextmanager
def source_tree(rev: str) -> Iterator[Path]:
    """The repository at ``rev`` (git archive into a temporary directory), for before/after runs."""
    with tempfile.TemporaryDirectory(prefix=f"dorm-{rev}-") as tmp:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True, timeout=60)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True, timeout=60)
        yield Path(tmp)


def resolve_target(spec: str, stack: ExitStack) -> Target:
    """``dorm-2p`` runs this checkout; ``dorm-2p@REV`` the same target at git revision REV."""
    name, _, rev = spec.partition("@")
    target = TARGETS[name]
    if not rev:
        return target
    return replace(target, name=spec, repo=stack.enter_context(source_tree(rev)))


@contextmanager
def running_servers(
    target: Target, server: str, db_url: str, redis_url: str, log_dir: Path, user_env: dict[str, str]
) -> Iterator[list[tuple[int, int]]]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": target.settings, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target.repo), env.get("PYTHONPATH", "")]))
    if target.settings == "config.settings":
        env.update(DORM_ENV, DATABASE_URL=db_url, REDIS_URL=redis_url, **target.env, **user_env)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=target.repo,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
    else:
        env.update(target.env, NAIVE_REDIS_URL=redis_url)
    with ExitStack() as stack:
        servers = []
        for i in range(target.processes):
            port = fanout.free_port()
            if server == "daphne":
                cmd = [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), "--websocket_timeout", "-1", target.app]
            else:
                flags = "--ws websockets-sansio --ws-max-size 1048576 --log-level warning --no-access-log"
                cmd = [sys.executable, "-m", "uvicorn", target.app, "--host", HOST, "--port", str(port), *flags.split()]
            log_path = log_dir / f"{target.name}-{i}.log"
            proc = fanout.start_pinned(cmd, target.repo, env, log_path, core=i)
            stack.callback(_stop, proc)
            fanout.wait_listening(port, proc, log_path)
            servers.append((port, proc.pid))
        yield servers


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- steps -----------------------------------------------------------------------------


def disturbance(row: Row) -> float:
    return row.result.other_server_core_pct or 0.0


def progress_line(row: Row) -> str:
    r = row.result
    refused = f", refused {r.refused}" if r.refused else ""
    return (
        f"{row.target} {row.workload} {row.step}: {r.offered_messages_per_s:,.0f} msg/s offered,"
        f" {r.sent_messages_per_s:,.0f} sent -> {r.achieved_deliveries_per_s:,.0f} deliveries/s,"
        f" lost {r.lost_pct:.2f}%, p50 {fanout.fmt(r.p50_ms)} ms, p99 {fanout.fmt(r.p99_ms)} ms,"
        f" acks {r.acks:,}/{r.messages:,}, servers {fanout.fmt(r.server_cpu_pct, 0)}%, gen {r.generator_cpu_pct:.0f}%,"
        f" infra {row.infra_cpu_pct:.0f}%, other {fanout.fmt(r.other_server_core_pct, 0)}%{refused}"
    )


def _start_py_spy(
    args: argparse.Namespace, target: Target, workload: Workload, step: str, servers: list[tuple[int, int]]
) -> list[subprocess.Popen[bytes]]:
    """--py-spy DIR: sample every server process over the step (collapsed stacks, one file each)."""
    if args.py_spy is None:
        return []
    args.py_spy.mkdir(parents=True, exist_ok=True)
    spies = []
    seconds = max(1, int(args.window))
    for i, (_, pid) in enumerate(servers):
        out = args.py_spy / f"{target.name}-{workload.name}-{step.replace(' ', '')}-p{i}.txt"
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "-r", "200", "-d", str(seconds)]
        cmd += ["-p", str(pid), "-f", "raw", "-o", str(out)]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def run_one(
    args: argparse.Namespace,
    target: Target,
    workload: Workload,
    servers: list[tuple[int, int]],
    infra: tuple[int, ...],
    step: str,
    rate: float,
) -> Row:
    def attempt(tag: str) -> Row:
        prefix = f"b{secrets.token_hex(3)}{tag}"
        cfg = RoomsConfig(
            host=HOST,
            ports=tuple(p for p, _ in servers),
            rooms=tuple(f"{prefix}-{i}" for i in range(workload.rooms)),
            message_rate=rate,
            clients=workload.clients,
            senders=workload.senders,
            warmup_s=args.warmup,
            window_s=args.window,
            drain_s=args.drain,
        )
        cores = (0, 1) if fanout.PINNED else ()
        measure = Measure(server_pids=tuple(pid for _, pid in servers), infra_pids=infra, cores=cores)
        spies: list[subprocess.Popen[bytes]] = []
        measure.at_window = lambda: spies.extend(_start_py_spy(args, target, workload, step, servers))
        try:
            result = asyncio.run(run_rooms_step(cfg, measure))
        finally:
            for spy in spies:
                spy.wait(timeout=60)
        row = Row(target.name, workload.name, step, result, measure.extra.get("infra_cpu_pct", 0.0))
        log(progress_line(row))
        return row

    row = attempt("")
    for i in range(args.retries):
        if disturbance(row) <= DISTURBED_PCT:
            break
        log(f"  disturbed by other processes; re-running ({i + 1}/{args.retries})")
        again = attempt(f"r{i + 1}")
        if disturbance(again) < disturbance(row):
            row = again
    return row


def run_target(args: argparse.Namespace, target: Target, db_url: str, redis_url: str, log_dir: Path) -> list[Row]:
    rows: list[Row] = []
    # One process: the generator on the other core; two: it floats.
    if fanout.PINNED:
        os.sched_setaffinity(0, {1} if target.processes == 1 else {0, 1})
    with running_servers(target, args.server, db_url, redis_url, log_dir, args.env) as servers:
        log(f"{target.name}: listening on {', '.join(str(p) for p, _ in servers)}")
        for wname in args.workloads:
            workload = WORKLOADS[wname]
            rates = [float(r) for r in getattr(args, f"{wname}_rates").split(",") if r.strip()]
            climbed_on = False
            for i, rate in enumerate(rates, 1):
                infra = tuple(p for p in (redis_pid(), *pg_backend_pids(db_url)) if p)
                try:
                    row = run_one(args, target, workload, servers, infra, f"ladder {i}", rate)
                except Exception as exc:  # noqa: BLE001 - a failed step ends this ladder, not the run
                    log(f"  {target.name} {wname} step {i} failed: {exc!r}")
                    break
                rows.append(row)
                why = fanout.stop_reason(args, row.result)
                if why is not None and i < len(rates):
                    if disturbance(row) > DISTURBED_PCT and not climbed_on:
                        log(f"  {why}, but other processes used our cores; one more step")
                        climbed_on = True
                        continue
                    log(f"  {target.name} {wname}: {why}; ladder stopped")
                if why is not None:
                    break
                climbed_on = False
    return rows


# -- report ----------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = (
        "| target | workload | step | offered msg/s | sent msg/s | deliveries/s | lost % | p50 ms | p99 ms"
        " | acks | servers CPU | CPU us/delivery | gen CPU | infra CPU | other load |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        r = row.result
        lines.append(
            f"| {row.target} | {row.workload} | {row.step} | {r.offered_messages_per_s:,.0f} | {r.sent_messages_per_s:,.0f}"
            f" | {r.achieved_deliveries_per_s:,.0f} | {r.lost_pct:.2f} | {fanout.fmt(r.p50_ms)} | {fanout.fmt(r.p99_ms)}"
            f" | {r.acks:,}/{r.messages:,} | {fanout.fmt(r.server_cpu_pct, 0)}% | {us_per_delivery(r)}"
            f" | {r.generator_cpu_pct:.0f}%"
            f" | {row.infra_cpu_pct:.0f}% | {fanout.fmt(r.other_server_core_pct, 0)}% |"
        )
    return "\n".join(lines)


def us_per_delivery(r: StepResult) -> str:
    """Server CPU per delivery: steadier than throughput on a busy machine."""
    if not r.server_cpu_pct or not r.achieved_deliveries_per_s:
        return "-"
    return f"{r.server_cpu_pct / 100 * 1e6 / r.achieved_deliveries_per_s:.1f}"


def sustained(rows: list[Row], p99_limit_ms: float = 50.0) -> Row | None:
    """The step with the most deliveries/s, no loss, everything sent, and p99 under the limit."""
    ok = [
        r
        for r in rows
        if r.result.lost == 0
        and r.result.p99_ms is not None
        and r.result.p99_ms < p99_limit_ms
        and r.result.sent_messages_per_s >= fanout.MIN_SENT_SHARE * r.result.offered_messages_per_s
    ]
    return max(ok, key=lambda r: r.result.achieved_deliveries_per_s, default=None)


def summary(rows: list[Row], targets: list[str], workloads: list[str]) -> str:
    lines = [
        "| workload | target | highest sustained deliveries/s (no loss, p99 < 50 ms) | p50 / p99 ms there"
        " | peak deliveries/s (any step) | vs dorm-1p | vs dorm-2p |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in workloads:
        best: dict[str, float] = {}
        for t in targets:
            mine = [r for r in rows if r.target == t and r.workload == w]
            s = sustained(mine)
            best[t] = s.result.achieved_deliveries_per_s if s else 0.0
        for t in targets:
            mine = [r for r in rows if r.target == t and r.workload == w]
            s = sustained(mine)
            peak = max((r.result.achieved_deliveries_per_s for r in mine), default=0.0)
            there = f"{fanout.fmt(s.result.p50_ms)} / {fanout.fmt(s.result.p99_ms)}" if s else "-"

            def ratio(ref: str) -> str:
                return f"{best[t] / best[ref]:.2f}x" if best.get(ref) else "-"

            lines.append(
                f"| {w} | {t} | {best[t]:,.0f} | {there} | {peak:,.0f} | {ratio('dorm-1p')} | {ratio('dorm-2p')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _, pinning = fanout.pin_generator()
    log(f"cluster bench: {pinning}; load average {os.getloadavg()[0]:.2f}")
    log_dir = Path(tempfile.mkdtemp(prefix="dorm-cluster-")) if args.server_log_dir is None else args.server_log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    started = time.time()
    load_before = os.getloadavg()
    try:
        with fresh_database() as db_url, private_redis_db(args.redis_db) as redis_url:
            for name in args.targets:
                redis_call("FLUSHDB", db=args.redis_db)
                try:
                    with ExitStack() as stack:
                        rows += run_target(args, resolve_target(name, stack), db_url, redis_url, log_dir)
                except Exception as exc:  # noqa: BLE001 - one broken target must not hide the others
                    log(f"{name}: failed: {exc!r}")
    finally:
        if args.server_log_dir is None:
            shutil.rmtree(log_dir, ignore_errors=True)
    load_after = os.getloadavg()
    print(table(rows))
    print()
    print(summary(rows, args.targets, args.workloads))
    print(
        f"\nload average {load_before[0]:.2f} before, {load_after[0]:.2f} after; other load: CPU other processes"
        f" took from the two cores during the window (re-run past {DISTURBED_PCT:.0f}%); infra: Redis and the"
        " PostgreSQL backends of the bench's database."
    )
    if args.json is not None:
        meta = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "argv": sys.argv,
            "revision": fanout.git_revision(),
            "pinning": pinning,
            "load_average": [load_before, load_after],
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2))
        log(f"JSON written to {args.json}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
