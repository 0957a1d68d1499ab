"""Load generator for many rooms on one or more server processes.

The same clients, frames, loss accounting and latency clock as ``_loadgen``
(one room, one port), generalised: R rooms of C clients each, S senders per
room, client i of a room connecting to ``ports[i % len(ports)]``, so one room
is spread evenly over every server process. Every message is due to the C - 1
other clients of its room. CPU is taken over every server process, plus the
"infrastructure" processes (Redis, the PostgreSQL backends of the bench's
database) which are reported apart; "other load" is what the rest of the
machine took from the cores the step used.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from _loadgen import (
    Client,
    Recorder,
    StepResult,
    _busy_pct,
    _drain,
    _send,
    core_times,
    cpu_seconds,
    summarise,
)

PathFor = Callable[[str, str], str]  # (room, user) -> request path


def anonymous_path(room: str, user: str) -> str:
    return f"/ws/{room}?userId={user}"


@dataclass(frozen=True)
class RoomsConfig:
    host: str
    ports: tuple[int, ...]
    rooms: tuple[str, ...]
    message_rate: float  # draws/s offered, over all senders of all rooms
    clients: int = 10  # per room
    senders: int = 1  # per room
    warmup_s: float = 1.0
    window_s: float = 5.0
    drain_s: float = 10.0
    connect_timeout_s: float = 60.0
    connect_concurrency: int = 200
    path_for: PathFor = anonymous_path

    @property
    def fanout(self) -> int:
        return self.clients - 1


@dataclass
class Measure:
    """Which processes and cores a step accounts for."""

    server_pids: tuple[int, ...]
    infra_pids: tuple[int, ...] = ()
    cores: tuple[int, ...] = ()  # cores the step runs on (servers and generator)
    extra: dict[str, float] = field(default_factory=dict)
    at_window: Callable[[], object] | None = None  # called as the measured window opens (profilers)


async def _open(cfg: RoomsConfig, rec: Recorder, room: str, user: str, port: int, gate: asyncio.Semaphore) -> Client:
    loop = asyncio.get_running_loop()
    async with gate:
        path = cfg.path_for(room, user)
        _, client = await loop.create_connection(lambda: Client(rec, cfg.host, port, path), cfg.host, port)
        welcome = await client.welcome
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"{room}/{user}: first frame is {welcome.get('type')!r}, not welcome: {welcome}")
    return client


async def open_welcomed(
    rec: Recorder, host: str, port: int, paths: list[str], *, concurrency: int = 200, timeout: float = 60
) -> list[Client | None]:
    """Open one client per path, at most ``concurrency`` handshakes at once,
    each waited until its welcome; None where that failed (counted by the
    caller: the idle and hibernation workloads report how many were held)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)

    async def one(path: str) -> Client | None:
        async with gate:
            client: Client | None = None
            try:
                _, client = await loop.create_connection(lambda: Client(rec, host, port, path), host, port)
                await asyncio.wait_for(client.welcome, timeout)
                return client
            except Exception:
                if client is not None and client.transport is not None:
                    client.transport.close()
                return None

    return list(await asyncio.gather(*(one(p) for p in paths)))


def _cpu(pids: tuple[int, ...]) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in pids)


async def run_rooms_step(cfg: RoomsConfig, measure: Measure) -> StepResult:
    rec = Recorder()
    gate = asyncio.Semaphore(cfg.connect_concurrency)
    plan: list[tuple[str, str, int]] = []
    for room in cfg.rooms:
        for i in range(cfg.clients):
            user = f"s{i}" if i < cfg.senders else f"r{i}"
            plan.append((room, user, cfg.ports[i % len(cfg.ports)]))
    opening = [asyncio.ensure_future(_open(cfg, rec, room, user, port, gate)) for room, user, port in plan]
    try:
        clients = await asyncio.wait_for(asyncio.gather(*opening), cfg.connect_timeout_s)
    except BaseException:
        for fut in opening:
            fut.cancel()
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().transport.close()  # type: ignore[union-attr]
        raise
    try:
        await asyncio.sleep(0.5 + 0.001 * len(clients))  # join announcements
        loop_start = time.perf_counter()
        window_start = loop_start + cfg.warmup_s
        window_end = window_start + cfg.window_s
        n_senders = cfg.senders * len(cfg.rooms)
        per_sender = cfg.message_rate / n_senders
        sender_clients = [c for (room, user, port), c in zip(plan, clients) if user.startswith("s")]
        writers = [
            asyncio.create_task(_send(c, rec, per_sender, loop_start + i / cfg.message_rate, window_end))
            for i, c in enumerate(sender_clients)
        ]
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        rec.first_measured = len(rec.send_times)
        rec.refused.clear()
        if measure.at_window is not None:
            measure.at_window()
        arrived0, cpu0, wall0 = rec.arrived, time.process_time(), time.perf_counter()
        srv0, infra0 = _cpu(measure.server_pids), _cpu(measure.infra_pids)
        cores0 = core_times(measure.cores)
        await asyncio.wait_for(asyncio.gather(*writers), cfg.window_s + cfg.warmup_s + 5.0)
        wall = time.perf_counter() - wall0
        arrived = rec.arrived - arrived0
        gen_cpu = (time.process_time() - cpu0) / wall * 100.0
        srv_cpu = (_cpu(measure.server_pids) - srv0) / wall * 100.0
        infra_cpu = (_cpu(measure.infra_pids) - infra0) / wall * 100.0
        cores1 = core_times(measure.cores)
        busy = [_busy_pct(cores0, cores1, c) for c in measure.cores]
        other = None
        if measure.cores and all(b is not None for b in busy):
            # Infrastructure may run on any core; count only what it could
            # have taken from ours (all of it, at most).
            other = max(0.0, sum(b for b in busy if b is not None) - srv_cpu - gen_cpu - infra_cpu)
        last_measured = len(rec.send_times)
        drained = await _drain(rec, cfg, last_measured)
    finally:
        await asyncio.gather(*(c.close(2.0) for c in clients), return_exceptions=True)
    measure.extra["infra_cpu_pct"] = infra_cpu
    # One summary for every workload (the generator's core is shared here).
    return summarise(cfg, rec, last_measured, wall, arrived, gen_cpu, srv_cpu, (other, None), drained)
