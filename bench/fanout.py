"""Fan-out benchmark: Dorm against the Channels tutorial pattern, one room.

    .venv/bin/python bench/fanout.py                       # dorm and naive on daphne
    .venv/bin/python bench/fanout.py --server uvicorn      # the same on uvicorn --ws websockets-sansio
    .venv/bin/python bench/fanout.py --targets dorm,dorm-asgi-send

Targets: ``dorm`` (config.asgi), ``dorm-asgi-send`` (the same with
DORM_DIRECT_SOCKET_WRITES=false: fan-out through the ASGI ``send`` only) and
``naive`` (bench/naive: the Channels tutorial consumer, ``group_send`` over
InMemoryChannelLayer, speaking the same welcome/draw/ack frames).

Each server runs as a subprocess pinned to core 0 (``taskset -c 0``), Dorm on
a fresh, migrated temporary SQLite file; this process, the load generator,
pins itself to core 1. Each step opens a fresh room with 50 clients, 5 of
which send draws open-loop at the step's rate (messages/s over all senders;
each message is due to the 49 other clients), and reports deliveries/s, loss,
end-to-end latency and the CPU of both sides. Every target gets one step at
the fixed rate (--rate), then the ladder (--rates), which stops at the first
step past the loss or p99 limits, pushed back, or with the generator's core
saturated. Progress goes to stderr, the Markdown table to stdout. Everything
binds and connects to 127.0.0.1 only, and every wait has a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _loadgen import StepConfig, StepResult, run_step

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SERVER_CORE = 0
GENERATOR_CORE = 1
DEFAULT_RATE = 100.0  # msg/s of the fixed-rate step: 4,900 deliveries/s, below every target's limit
DEFAULT_RATES = "50,100,200,500,1000,2000,3000,4000,5000,6000,7000,8000"  # msg/s
STARTUP_TIMEOUT_S = 60.0
# Past this share of its core the generator's own queueing would show in the
# latencies: such a step measures the generator, and the ladder stops.
GENERATOR_BUSY_PCT = 90.0
# A step that could not send this share of its offered messages was pushed
# back (the server stopped reading) or starved of generator CPU.
MIN_SENT_SHARE = 0.9
# The machine may be shared: a step during which other processes took more
# than this share of the server's core (or filled the generator's core) is
# re-run (--retries), keeping the quietest try.
DISTURBED_PCT = 15.0

# target name -> (ASGI application, DJANGO_SETTINGS_MODULE, extra environment)
TARGETS: dict[str, tuple[str, str, dict[str, str]]] = {
    "dorm": ("config.asgi:application", "config.settings", {}),
    "dorm-asgi-send": ("config.asgi:application", "config.settings", {"DORM_DIRECT_SOCKET_WRITES": "false"}),
    # Dorm without usage metering: the "before" of the metering overhead (docs/billing.md).
    "dorm-nometer": ("config.asgi:application", "config.settings", {"DORM_METERING": "false"}),
    "naive": ("bench.naive.asgi:application", "bench.naive.settings", {}),
}
# Every Dorm target: production-like settings (no DEBUG query log), anonymous
# ?userId= access, logs at WARNING; the per-address connection limit and the
# per-user message limit off (the generator is one address, each sender far
# above 20 msg/s), and a token secret for the benchmarks that mint tokens.
BENCH_TOKEN_SECRET = "dorm-bench-token-secret-not-for-production-0123456789"
BENCH_METRICS_TOKEN = "bench-metrics-token"
DORM_ENV = {
    "DJANGO_DEBUG": "false",
    "DORM_ALLOW_ANONYMOUS": "1",
    "DORM_LOG_LEVEL": "WARNING",
    "DORM_CONNECT_RATE_PER_SECOND": "0",
    "DORM_MESSAGE_RATE_PER_SECOND": "0",
    "DORM_TOKEN_SECRET": BENCH_TOKEN_SECRET,
    # The suite reads the server's garbage-collection pauses from /metrics.
    "DORM_METRICS_TOKEN": BENCH_METRICS_TOKEN,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Row:
    target: str
    server: str
    step: str
    room: str
    result: StepResult

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "server": self.server,
            "step": self.step,
            "room": self.room,
            **self.result.as_dict(),
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--targets", default="dorm,naive", help=f"comma-separated, of: {', '.join(TARGETS)} (default: %(default)s)"
    )
    p.add_argument("--server", choices=["daphne", "uvicorn", "both"], default="daphne", help="(default: %(default)s)")
    p.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="msg/s of the fixed-rate step, 0 to skip (default: %(default)s)"
    )
    p.add_argument(
        "--rates", default=DEFAULT_RATES, help="the ladder: msg/s, ascending, comma-separated, '' to skip (default: %(default)s)"
    )
    p.add_argument("--clients", type=int, default=50, help="clients in the room (default: %(default)s)")
    p.add_argument("--senders", type=int, default=5, help="of which send (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the window (default: %(default)s)")
    p.add_argument("--window", type=float, default=5.0, help="measured seconds per step (default: %(default)s)")
    p.add_argument(
        "--drain", type=float, default=10.0, help="most seconds to wait for stragglers after the window (default: %(default)s)"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help=f"re-runs of a step disturbed by other processes (> {DISTURBED_PCT:.0f}%% of the server's core) (default: %(default)s)",
    )
    p.add_argument("--max-loss-pct", type=float, default=1.0, help="stop a ladder past this loss (default: %(default)s)")
    p.add_argument("--max-p99-ms", type=float, default=1000.0, help="stop a ladder past this p99 (default: %(default)s)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the Dorm targets, e.g. SQLITE_SYNCHRONOUS=NORMAL (repeatable)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--server-log-dir", type=Path, metavar="DIR", help="keep the servers' logs here (default: removed)")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in args.targets:
        if t not in TARGETS:
            p.error(f"unknown target {t!r}; choose from {', '.join(TARGETS)}")
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if any("=" not in kv for kv in args.env):
        p.error("--env takes KEY=VALUE")
    args.env = dict(kv.split("=", 1) for kv in args.env)
    if not 0 < args.senders < args.clients:
        p.error("need 0 < --senders < --clients")
    return args


def pin_generator() -> tuple[list[str], str]:
    """Pin this process to its own core; return the server's command prefix and a note."""
    global PINNED
    if not hasattr(os, "sched_setaffinity") or shutil.which("taskset") is None:
        return [], "not pinned (no sched_setaffinity or taskset)"
    cores = sorted(os.sched_getaffinity(0))
    if SERVER_CORE not in cores or GENERATOR_CORE not in cores:
        return [], f"not pinned (cores available: {cores})"
    os.sched_setaffinity(0, {GENERATOR_CORE})
    PINNED = True
    return ["taskset", "-c", str(SERVER_CORE)], f"server on core {SERVER_CORE}, generator on core {GENERATOR_CORE}"


PINNED = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_pinned(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, core: int = SERVER_CORE) -> subprocess.Popen[bytes]:
    """Start a server process pinned to ``core`` (when pinning is on), its output into ``log_path``."""
    taskset = ["taskset", "-c", str(core)] if PINNED else []
    with open(log_path, "wb") as out:
        return subprocess.Popen(taskset + cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server not listening on {HOST}:{port} after {STARTUP_TIMEOUT_S:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def running_server(
    target: str, server: str, log_dir: Path, user_env: dict[str, str]
) -> Iterator[tuple[int, int]]:
    """Start one server on a fresh port (Dorm: on a fresh, migrated SQLite file); yield (port, pid)."""
    with tempfile.TemporaryDirectory(prefix="dorm-bench-db-") as db_dir:
        yield from _running_server(target, server, log_dir, Path(db_dir), user_env)


def _running_server(
    target: str, server: str, log_dir: Path, db_dir: Path, user_env: dict[str, str]
) -> Iterator[tuple[int, int]]:
    app, settings, extra_env = TARGETS[target]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings, "PYTHONUNBUFFERED": "1"}
    # The server imports from the repository root (config, rooms, bench.naive).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    if settings == "config.settings":
        env.update(DORM_ENV, SQLITE_PATH=str(db_dir / "db.sqlite3"), **extra_env, **user_env)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=REPO,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )
    port = free_port()
    if server == "daphne":
        # --websocket_timeout -1 as `make run`: no cut-off of long sockets.
        cmd = [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), "--websocket_timeout", "-1", app]
    else:
        # BENCH_UVICORN_WS=websockets: uvicorn's legacy protocol, to compare.
        flags = f"--ws {os.environ.get('BENCH_UVICORN_WS', 'websockets-sansio')} --ws-max-size 1048576 --log-level warning --no-access-log"
        cmd = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port), *flags.split()]
    log = log_dir / f"{target}-{server}.log"
    proc = start_pinned(cmd, REPO, env, log)
    try:
        wait_listening(port, proc, log)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def git_revision() -> str:
    """The commit measured, with "+dirty" when the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def disturbance(r: StepResult) -> float:
    """How much other processes may have changed a step's numbers, in % of a core.

    Any other load on the server's core counts; on the generator's core only
    what would not have fitted beside the generator.
    """
    squeeze = r.generator_cpu_pct + (r.other_generator_core_pct or 0.0) - GENERATOR_BUSY_PCT
    return max(r.other_server_core_pct or 0.0, squeeze)


def progress_line(row: Row) -> str:
    r = row.result
    refused = f", refused {r.refused}" if r.refused else ""
    other = f", other load {fmt(r.other_server_core_pct, 0)}%/{fmt(r.other_generator_core_pct, 0)}%"
    return (
        f"{row.target}/{row.server} {row.step}: {r.offered_messages_per_s:,.0f} msg/s offered, {r.sent_messages_per_s:,.0f} sent"
        f" -> {r.achieved_deliveries_per_s:,.0f} deliveries/s, lost {r.lost:,} ({r.lost_pct:.2f}%),"
        f" p50 {fmt(r.p50_ms)} ms, p99 {fmt(r.p99_ms)} ms, acks {r.acks:,}/{r.messages:,},"
        f" server CPU {fmt(r.server_cpu_pct, 0)}%, gen CPU {r.generator_cpu_pct:.0f}%{other}{refused}"
    )


def table(rows: list[Row]) -> str:
    head = (
        "| target | server | step | offered msg/s | sent msg/s | deliveries/s | lost % | p50 ms | p99 ms "
        "| acks | ack p50 ms | server CPU | gen CPU | other load |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        r = row.result
        busy = " (!)" if r.generator_cpu_pct >= GENERATOR_BUSY_PCT else ""
        lines.append(
            f"| {row.target} | {row.server} | {row.step} | {r.offered_messages_per_s:,.0f} | {r.sent_messages_per_s:,.0f}"
            f" | {r.achieved_deliveries_per_s:,.0f} | {r.lost_pct:.2f} | {fmt(r.p50_ms)} | {fmt(r.p99_ms)}"
            f" | {r.acks:,}/{r.messages:,} | {fmt(r.ack_p50_ms)} | {fmt(r.server_cpu_pct, 0)}%"
            f" | {r.generator_cpu_pct:.0f}%{busy} | {fmt(r.other_server_core_pct, 0)}% / {fmt(r.other_generator_core_pct, 0)}% |"
        )
    return "\n".join(lines)


def stop_reason(args: argparse.Namespace, r: StepResult) -> str | None:
    """Why a ladder must not climb past this step, if it must not."""
    if r.generator_cpu_pct >= GENERATOR_BUSY_PCT:
        return "generator saturated, higher steps would measure the generator"
    if r.lost_pct > args.max_loss_pct:
        return f"loss {r.lost_pct:.2f}% > {args.max_loss_pct}%"
    if (r.p99_ms or 0.0) > args.max_p99_ms:
        return f"p99 {r.p99_ms:,.0f} ms > {args.max_p99_ms:,.0f} ms"
    if r.sent_messages_per_s < MIN_SENT_SHARE * r.offered_messages_per_s:
        return f"sent only {r.sent_messages_per_s:,.0f} of {r.offered_messages_per_s:,.0f} msg/s (pushed back)"
    return None


def run_one(args: argparse.Namespace, target: str, server: str, port: int, pid: int, step: str, rate: float) -> Row:
    room = f"bench-{target}-{server}-{step.replace(' ', '')}-{secrets.token_hex(4)}"
    cfg = StepConfig(
        host=HOST,
        port=port,
        room=room,
        message_rate=rate,
        clients=args.clients,
        senders=args.senders,
        warmup_s=args.warmup,
        window_s=args.window,
        drain_s=args.drain,
    )
    cores = (SERVER_CORE, GENERATOR_CORE) if PINNED else (None, None)
    row = Row(target, server, step, room, asyncio.run(run_step(cfg, pid, *cores)))
    log(progress_line(row))
    for attempt in range(args.retries):
        if disturbance(row.result) <= DISTURBED_PCT:
            break
        log(f"  disturbed by other processes; re-running ({attempt + 1}/{args.retries})")
        room = f"{room}-r{attempt + 1}"
        again = Row(target, server, step, room, asyncio.run(run_step(replace(cfg, room=room), pid, *cores)))
        log(progress_line(again))
        if disturbance(again.result) < disturbance(row.result):
            row = again
    if row.result.generator_cpu_pct >= GENERATOR_BUSY_PCT:
        log(f"  warning: the generator used {row.result.generator_cpu_pct:.0f}% of its core; this step may measure it")
    return row


def run_target(args: argparse.Namespace, target: str, server: str, port: int, pid: int) -> list[Row]:
    rows: list[Row] = []
    if args.rate > 0:
        rows.append(run_one(args, target, server, port, pid, "fixed", args.rate))
    climbed_on = False
    for i, rate in enumerate(args.rates, 1):
        rows.append(row := run_one(args, target, server, port, pid, f"ladder {i}", rate))
        why = stop_reason(args, row.result)
        if why is not None and i < len(args.rates):
            disturbed = (row.result.other_server_core_pct or 0.0) > DISTURBED_PCT
            if disturbed and not climbed_on and row.result.generator_cpu_pct < GENERATOR_BUSY_PCT:
                # Other processes took the server's core: the limit may be
                # theirs. One more step tells; two failures in a row stop.
                log(f"  {target}/{server}: {why}, but other processes used the server's core; one more step")
                climbed_on = True
                continue
            log(f"  {target}/{server}: {why}; ladder stopped")
        if why is not None:
            break
        climbed_on = False
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _, pinning = pin_generator()
    servers = ["daphne", "uvicorn"] if args.server == "both" else [args.server]
    log(f"fan-out: {args.clients} clients, {args.senders} senders, one room per step; {pinning}")
    log_dir = Path(tempfile.mkdtemp(prefix="dorm-bench-")) if args.server_log_dir is None else args.server_log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    started = time.time()
    try:
        for server in servers:
            for target in args.targets:
                try:
                    with running_server(target, server, log_dir, args.env) as (port, pid):
                        log(f"{target}/{server}: listening on {HOST}:{port}, pid {pid}")
                        rows += run_target(args, target, server, port, pid)
                except Exception as exc:  # noqa: BLE001 - one broken server must not hide the others' results
                    log(f"{target}/{server}: failed: {exc!r}")
    finally:
        if args.server_log_dir is None:
            shutil.rmtree(log_dir, ignore_errors=True)
    print(table(rows))
    if any(row.result.generator_cpu_pct >= GENERATOR_BUSY_PCT for row in rows):
        print(f"\n(!) generator CPU >= {GENERATOR_BUSY_PCT:.0f}%: that step may be bounded by the generator.")
    if any(disturbance(row.result) > DISTURBED_PCT for row in rows):
        print(
            f"\nother load: CPU used on the server's / the generator's core by other processes. Past"
            f" {DISTURBED_PCT:.0f}% on the server's core (or the generator's core full) even after {args.retries}"
            " re-runs, that step was measured on a busy machine."
        )
    if args.json is not None:
        meta = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "argv": sys.argv,
            "revision": git_revision(),
            "pinning": pinning,
            "python": sys.version.split()[0],
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2))
        log(f"JSON written to {args.json}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
