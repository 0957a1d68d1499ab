"""Fault campaign (issue 11): many rooms and clients through a scripted
sequence of faults, then every acknowledged event checked against the log.

    .venv/bin/python bench/faults.py              # the full campaign (a few minutes)
    .venv/bin/python bench/faults.py --short      # the CI-sized one (tests/e2e/test_fault_campaign.py)
    make bench-faults BENCH_ARGS="--rooms 10"

Two real daphne processes in the distributed mode, on a fresh PostgreSQL
database reached through a TCP proxy (tests/e2e/tcp_proxy.py: the campaign
can freeze or cut the database's connections without touching the machine's
server) and a private redis-server (tests/e2e/services.py: the campaign may
restart it). N rooms of M real WebSocket clients (``websockets``), spread
over both processes. In each room some clients send durable ``draw``
messages with client ids at a set rate; every client sends ephemeral
cursors. Clients behave as PROTOCOL.md asks (and as clients/js does): on any
close they reconnect to a live process with ``since`` = the last contiguous
seq they saw and re-send every unacknowledged message with the same id; an
``error`` reply (``internal`` during a database outage) means "not applied,
retry later", as does no reply within a few seconds.

Faults, in order, with quiet gaps between them:

- ``kill``: SIGKILL one server process, then start a new one in its place;
- ``redis``: kill the private redis-server and start it again (empty);
- ``pg-pause``: the database proxy stops moving bytes for longer than the
  servers' database deadline (queries hang, rooms degrade: durable messages
  get ``internal`` until the database answers again);
- ``pg-cut``: the proxy resets every database connection at once;
- ``client-cut``: every client's TCP connection is aborted (RST, no close);
- ``slow``: a client per affected room stops reading while its room gets
  large messages: the server closes it with 4408; it reads again, resumes.

Recovery time of a fault: from injection until every client is connected,
every room has acknowledged a message after the fault's action ended, no
message sent before the fault is still unacknowledged, and every client has
seen everything its room had acknowledged before the fault.

At the end the senders stop, everything settles, and the PostgreSQL log is
compared with what was acknowledged and what every client saw: lost (acked,
not in the log at its seq), duplicated (a client id applied twice, or a seq
delivered twice to one client) and views differing from the log must all be
0; the command exits 1 otherwise. Progress lines go to stderr, the table to
stdout. The servers' logs (metadata only, never payloads) stay in the run's
directory when --keep is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.e2e.distributed import Cluster, start_cluster  # noqa: E402
from tests.e2e.server import free_port  # noqa: E402
from tests.e2e.services import PrivateRedis, fresh_postgres_database  # noqa: E402
from tests.e2e.tcp_proxy import TcpProxy  # noqa: E402

SERVER_ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b")
ALL_FAULTS = ("kill", "redis", "pg-pause", "pg-cut", "client-cut", "slow")
# No reply to a message within this: send it again (same id: applied once).
RESEND_AFTER_SECONDS = 5.0
ERROR_RETRY_SECONDS = 0.5
# The slow-client fault: the server's bounds (lower than the defaults so a
# few MB of traffic reach them) and the large messages that fill them.
OUTBOUND_SOFT_BYTES = 64 * 1024
OUTBOUND_MAX_BYTES = 512 * 1024
BLOB = 8000
SLOW_CLIENT_RCVBUF = 4096


@dataclass
class Config:
    rooms: int = 20
    clients_per_room: int = 5
    senders_per_room: int = 2
    rate: float = 2.0  # durable messages/s per sender
    cursor_rate: float = 1.0  # cursors/s per client
    warmup: float = 10.0  # seconds of load before the first fault
    gap: float = 10.0  # quiet seconds after a fault recovered
    # Longer than the servers' database deadline (DORM_DB_TIMEOUT_SECONDS, 5 s):
    # rooms degrade (durable messages get `internal`) and recover.
    pg_pause: float = 7.0
    slow_rooms: int = 2  # rooms that get a slow client
    recover_timeout: float = 90.0
    settle_timeout: float = 90.0
    faults: tuple[str, ...] = ALL_FAULTS
    seed: int = 11

    @classmethod
    def short(cls) -> Config:
        return cls(rooms=4, clients_per_room=3, senders_per_room=2, rate=3.0, cursor_rate=1.0, warmup=2.0,
                   gap=1.5, pg_pause=6.0, slow_rooms=1, recover_timeout=40.0, settle_timeout=40.0)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Pending:
    payload: dict[str, Any]
    first_sent: float
    sent_at: float = 0.0
    retry_at: float | None = None  # set by an error reply


@dataclass
class FaultRecord:
    name: str
    injected_at: float  # seconds since the load started
    lasted: float = 0.0  # how long the fault's action took (pause length, restart)
    recovered_after: float | None = None
    reconnects: int = 0
    errors: int = 0
    server_errors: int = 0  # ERROR/CRITICAL lines the servers logged from injection to the next fault
    note: str = ""


class Client:
    """A room client that behaves as PROTOCOL.md asks of real ones."""

    def __init__(self, campaign: Campaign, room: str, user: str, prefer: int, sender: bool, slow_capable: bool) -> None:
        self.c = campaign
        self.room = room
        self.user = user
        self.prefer = prefer
        self.sender = sender
        self.slow_capable = slow_capable
        self.ws: ClientConnection | None = None
        self.connected = False
        self.ever_connected = False
        self.reading = asyncio.Event()
        self.reading.set()
        self.stopping = False
        # seq -> (user, client id or None, payload or None): own acks carry the id, others' events the payload.
        self.seen: dict[int, tuple[str, str | None, Any]] = {}
        self.last_seq = 0  # contiguous prefix: what `since` says
        self.seen_from = 0  # the first welcome's seq: earlier events came as state
        self.unacked: dict[str, Pending] = {}
        self.acked: dict[str, int] = {}
        self.n = 0
        self.reconnects = 0
        self.close_codes: list[int | None] = []
        self.duplicates: list[int] = []
        self.conn_no = 0  # connections so far
        self.conn_since: int | None = None  # the since of the current connection
        self.conn_top = 0  # highest seq received on the current connection
        self.problems: list[str] = []
        self.errors: dict[str, int] = {}
        self.cursors_in = 0
        self.cursors_out = 0
        self.tasks: list[asyncio.Task[None]] = []

    # -- connection -----------------------------------------------------------

    async def _open(self, url: str) -> ClientConnection:
        kwargs: dict[str, Any] = {}
        if self.slow_capable:
            # A small receive buffer, so a client that stops reading pushes
            # back on the server within kilobytes, as a phone in a tunnel does.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_CLIENT_RCVBUF)
            sock.setblocking(False)
            parts = urlsplit(url)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port)), 5)
            except BaseException:
                sock.close()
                raise
            kwargs["sock"] = sock
        return await asyncio.wait_for(
            connect(url, proxy=None, open_timeout=5, close_timeout=2, ping_interval=None, max_size=None, max_queue=16,
                    **kwargs),
            6,
        )

    async def connect(self) -> None:
        attempt = 0
        while not self.stopping:
            servers = self.c.cluster.servers
            alive = [i for i, s in enumerate(servers) if s.process is not None and s.process.poll() is None]
            if not alive:
                await asyncio.sleep(0.2)
                continue
            index = self.prefer if self.prefer in alive and attempt == 0 else alive[(self.prefer + attempt) % len(alive)]
            attempt += 1
            query: dict[str, Any] = {"userId": self.user}
            if self.ever_connected:
                query["since"] = self.last_seq
            url = servers[index].url(self.room, **query)
            try:
                ws = await self._open(url)
                welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            except Exception:
                await asyncio.sleep(min(0.1 * attempt, 1.0))
                continue
            if welcome.get("type") != "welcome":
                # A refusal (e.g. a close frame right after accept): try again.
                await ws.close()
                await asyncio.sleep(min(0.1 * attempt, 1.0))
                continue
            if self.ever_connected and not welcome.get("resumed"):
                self.problems.append(f"resume since={self.last_seq} refused (welcome seq={welcome.get('seq')})")
            if not self.ever_connected:
                # Events before the welcome are in its state: this client's view starts after it.
                self.seen_from = int(welcome.get("seq") or 0)
                self.last_seq = self.seen_from
            self.ws = ws
            self.conn_no += 1
            self.conn_since = query.get("since")
            self.conn_top = int(query["since"] if "since" in query else (welcome.get("seq") or 0))
            self.ever_connected = True
            self.connected = True
            now = time.monotonic()
            for message_id, pending in list(self.unacked.items()):
                await self._send_draw(message_id, pending, now)
            return

    async def run(self) -> None:
        while not self.stopping:
            await self.connect()
            if self.stopping:
                break
            assert self.ws is not None
            try:
                while True:
                    if not self.reading.is_set():
                        await self.reading.wait()
                    data = await self.ws.recv()
                    if isinstance(data, str):
                        self.on_frame(orjson.loads(data))
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                if not self.stopping:
                    self.close_codes.append(code)
                    if code == 1011:
                        self.problems.append("closed with 1011")
            except Exception as exc:  # noqa: BLE001 - reported, then reconnect
                self.problems.append(f"reader: {exc!r}")
            self.connected = False
            if not self.stopping:
                self.reconnects += 1

    def abort(self) -> None:
        """Cut the TCP connection (RST, no closing handshake)."""
        ws = self.ws
        if ws is None or ws.transport is None:
            return
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        ws.transport.abort()

    # -- frames ---------------------------------------------------------------

    def on_frame(self, f: dict[str, Any]) -> None:
        kind = f.get("type")
        if kind == "ack":
            message_id = f.get("id")
            seq = f.get("seq")
            if not isinstance(seq, int):
                return
            if seq > self.conn_top:
                self.conn_top = seq
            if message_id in self.unacked:
                self.unacked.pop(message_id)
                self.acked[message_id] = seq
                self.c.acked_at(self.room, seq)
                self._see(seq, (self.user, message_id, None))
            elif message_id in self.acked and self.acked[message_id] != seq:
                self.problems.append(f"{message_id} acked as {self.acked[message_id]} then {seq}")
        elif kind == "error":
            reason = str(f.get("reason"))
            self.errors[reason] = self.errors.get(reason, 0) + 1
            self.c.errors += 1
            pending = self.unacked.get(f.get("id"))  # type: ignore[arg-type]
            if pending is not None:
                pending.retry_at = time.monotonic() + ERROR_RETRY_SECONDS
        elif kind == "draw" and isinstance(f.get("seq"), int):
            seq = f["seq"]
            if seq != self.conn_top + 1 and len(self.problems) < 50:
                # One connection delivers a gapless, increasing run of seqs.
                self.problems.append(
                    f"connection {self.conn_no} (since={self.conn_since}) got seq {seq} after {self.conn_top} "
                    f"during {self.c.phase}"
                )
            self.conn_top = max(self.conn_top, seq)
            self._see(seq, (f.get("userId"), None, f.get("payload")))
        elif kind == "cursor":
            self.cursors_in += 1

    def _see(self, seq: int, entry: tuple[Any, str | None, Any]) -> None:
        old = self.seen.get(seq)
        if old is None:
            if seq <= self.last_seq:
                # Below the contiguous prefix and never seen: a hole filled late.
                self.problems.append(f"seq {seq} arrived after {self.last_seq}")
            self.seen[seq] = entry
        elif old[1] is None and entry[1] is None:
            self.duplicates.append(seq)  # the same event delivered twice
        elif old[1] is not None and entry[1] is not None and old[1] != entry[1]:
            self.problems.append(f"seq {seq} acked for {old[1]} and {entry[1]}")
        elif entry[1] is not None:
            self.seen[seq] = entry  # an own message replayed, then acked: keep the id
        while self.last_seq + 1 in self.seen:
            self.last_seq += 1

    # -- sending --------------------------------------------------------------

    async def _send_draw(self, message_id: str, pending: Pending, now: float) -> None:
        pending.sent_at = now
        pending.retry_at = None
        ws = self.ws
        if ws is None or not self.connected:
            return
        try:
            await asyncio.wait_for(
                ws.send(orjson.dumps({"type": "draw", "id": message_id, "payload": pending.payload}).decode()), 5
            )
        except Exception:
            pass  # the reconnect re-sends it

    async def draw(self, payload: dict[str, Any]) -> None:
        self.n += 1
        message_id = f"{self.user}-{self.n}"
        now = time.monotonic()
        pending = Pending(payload, now)
        self.unacked[message_id] = pending
        self.c.sent += 1
        await self._send_draw(message_id, pending, now)

    async def send_loop(self) -> None:
        period = 1.0 / self.c.config.rate
        await asyncio.sleep(random.random() * period)
        while not self.c.senders_stop:
            if self.connected:
                await self.draw({"n": self.n + 1, "x": random.randint(0, 999), "y": random.randint(0, 999)})
            await asyncio.sleep(period)

    async def retry_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.25)
            if not self.connected:
                continue
            now = time.monotonic()
            for message_id, pending in list(self.unacked.items()):
                due = pending.retry_at if pending.retry_at is not None else pending.sent_at + RESEND_AFTER_SECONDS
                if now >= due and message_id in self.unacked:
                    await self._send_draw(message_id, pending, now)

    async def cursor_loop(self) -> None:
        if self.c.config.cursor_rate <= 0:
            return
        period = 1.0 / self.c.config.cursor_rate
        await asyncio.sleep(random.random() * period)
        while not self.c.senders_stop:
            ws = self.ws
            if ws is not None and self.connected and self.reading.is_set():
                try:
                    await asyncio.wait_for(ws.send('{"type":"cursor","payload":{"x":1,"y":2}}'), 2)
                    self.cursors_out += 1
                except Exception:
                    pass
            await asyncio.sleep(period)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.run(), name=f"client:{self.user}"),
                      loop.create_task(self.retry_loop()), loop.create_task(self.cursor_loop())]
        if self.sender:
            self.tasks.append(loop.create_task(self.send_loop()))

    async def stop(self) -> None:
        self.stopping = True
        self.reading.set()
        ws = self.ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 3)
            except Exception:
                pass
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass
class Result:
    config: Config
    duration: float = 0.0
    connections: int = 0
    min_connected: int = 0
    sent: int = 0
    acked: int = 0
    in_log: int = 0
    seen_min: int = 0
    seen_max: int = 0
    seen_expected: int = 0  # sum over clients of the log events after their first welcome
    seen_total: int = 0
    lost: int = 0
    duplicated_applied: int = 0
    duplicated_delivered: int = 0
    views_differing: int = 0
    unacked_at_end: int = 0
    cursors_out: int = 0
    cursors_in: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)
    faults: list[FaultRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    slow_closes: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated_applied == 0
            and self.duplicated_delivered == 0
            and self.views_differing == 0
            and self.unacked_at_end == 0
            and not self.problems
            and all(f.recovered_after is not None for f in self.faults)
        )

    def table(self) -> str:
        c = self.config
        lines = [
            f"Fault campaign: 2 daphne processes (distributed mode), {c.rooms} rooms x {c.clients_per_room} clients, "
            f"{c.rooms * c.senders_per_room} senders at {c.rate:g} durable msg/s each, cursors {c.cursor_rate:g}/s per client",
            "",
            "| load held | |",
            "|---|---|",
            f"| duration (load on) | {self.duration:.1f} s |",
            f"| durable messages acked | {self.acked} ({self.acked / max(self.duration, 1e-9):.1f} msg/s) |",
            f"| cursors sent / received | {self.cursors_out} / {self.cursors_in} "
            f"({self.cursors_out / max(self.duration, 1e-9):.1f}/s sent) |",
            f"| connections | {self.connections} (fewest connected during a fault: {self.min_connected}) |",
            f"| error replies (retried) | {self.errors} "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(self.error_reasons.items())) or 'none'}) |",
            "",
            "| # | fault | injected at | fault lasted | recovered after | client reconnects | error replies | server ERROR lines | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, f in enumerate(self.faults, 1):
            rec = "NOT RECOVERED" if f.recovered_after is None else f"{f.recovered_after:.2f} s"
            lines.append(
                f"| {i} | {f.name} | {f.injected_at:.1f} s | {f.lasted:.2f} s | {rec} | {f.reconnects} | {f.errors} | "
                f"{f.server_errors} | {f.note} |"
            )
        lines += [
            "",
            "| acknowledged events | events in the log | events the clients saw | lost | duplicated | views differing from the log |",
            "|---|---|---|---|---|---|",
            f"| {self.acked} | {self.in_log} | {self.seen_total} of {self.seen_expected} due ({self.connections} clients, "
            f"{self.seen_min}-{self.seen_max} each) | {self.lost} | "
            f"{self.duplicated_applied + self.duplicated_delivered} | {self.views_differing} |",
        ]
        if self.unacked_at_end:
            lines.append(f"\nUNACKNOWLEDGED AT THE END: {self.unacked_at_end}")
        if self.problems:
            lines.append("\nPROBLEMS:\n" + "\n".join(f"- {p}" for p in self.problems[:30]))
        lines.append(f"\nresult: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


class Campaign:
    def __init__(self, config: Config, cluster: Cluster, redis: PrivateRedis, proxy: TcpProxy, directory: Path,
                 direct_database_url: str) -> None:
        self.config = config
        self.cluster = cluster
        self.redis = redis
        self.proxy = proxy
        self.directory = directory
        self.direct_database_url = direct_database_url
        self.clients: list[Client] = []
        self.rooms: list[str] = []
        self.room_clients: dict[str, list[Client]] = {}
        self.last_ack: dict[str, float] = {}
        self.max_acked: dict[str, int] = {}
        self.senders_stop = False
        self.sent = 0
        self.errors = 0
        self.restarts = 0
        self.started = 0.0
        self.min_connected = 0
        self.phase = "warm-up"

    def acked_at(self, room: str, seq: int) -> None:
        self.last_ack[room] = time.monotonic()
        if seq > self.max_acked.get(room, 0):
            self.max_acked[room] = seq

    def connected(self) -> int:
        return sum(1 for cl in self.clients if cl.connected)

    async def start_clients(self) -> None:
        cfg = self.config
        tag = os.urandom(3).hex()
        for r in range(cfg.rooms):
            room = f"fault-{tag}-{r}"
            self.rooms.append(room)
            members = []
            for k in range(cfg.clients_per_room):
                # The last client of the first rooms is the one that will turn slow.
                slow = r < cfg.slow_rooms and k == cfg.clients_per_room - 1
                members.append(Client(self, room, f"r{r}u{k}", prefer=(r + k) % 2, sender=k < cfg.senders_per_room,
                                      slow_capable=slow))
            self.room_clients[room] = members
            self.clients += members
        # Connect in small batches (the first connect of a room wakes it).
        for i in range(0, len(self.clients), 20):
            batch = self.clients[i : i + 20]
            await asyncio.gather(*(cl.connect() for cl in batch))
        for cl in self.clients:
            cl.start()

    # -- recovery -------------------------------------------------------------

    def _recovered(self, t0: float, t_end: float, acked_before: dict[str, int]) -> bool:
        for cl in self.clients:
            if not cl.connected or not cl.reading.is_set():
                return False
            if cl.last_seq < acked_before.get(cl.room, 0):
                return False
            if any(p.first_sent < t0 for p in cl.unacked.values()):
                return False
        return all(self.last_ack.get(room, 0.0) > t_end for room in self.rooms)

    async def _wait_recovered(self, record: FaultRecord, t0: float, t_end: float, acked_before: dict[str, int]) -> None:
        deadline = t0 + self.config.recover_timeout
        last_note = time.monotonic()
        while time.monotonic() < deadline:
            self.min_connected = min(self.min_connected, self.connected())
            if self._recovered(t0, t_end, acked_before):
                record.recovered_after = time.monotonic() - t0
                return
            if time.monotonic() - last_note > 5:
                last_note = time.monotonic()
                behind = sum(1 for cl in self.clients if cl.last_seq < acked_before.get(cl.room, 0))
                old = sum(1 for cl in self.clients for p in cl.unacked.values() if p.first_sent < t0)
                silent = sum(1 for room in self.rooms if self.last_ack.get(room, 0.0) <= t_end)
                progress(f"  waiting: {self.connected()}/{len(self.clients)} connected, {behind} behind, "
                         f"{old} old messages unacked, {silent} rooms without an ack since")
            await asyncio.sleep(0.05)
        self.min_connected = min(self.min_connected, self.connected())

    # -- faults ---------------------------------------------------------------

    async def fault_kill(self, record: FaultRecord) -> None:
        index = self.restarts % len(self.cluster.servers)
        self.restarts += 1
        server = self.cluster.servers[index]
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(server.process.wait, 10)
        server.stop()  # closes its log file
        progress(f"  SIGKILLed daphne-{index} (pid {server.process.pid}); starting a new one")
        new = await asyncio.to_thread(self.cluster.restart, index, self.directory, f"daphne-{index}-restart{self.restarts}")
        record.note = f"daphne-{index} killed; new process listening after {time.monotonic() - self._t0:.1f} s"
        progress(f"  daphne-{index} restarted on port {new.port}")

    async def fault_redis(self, record: FaultRecord) -> None:
        await asyncio.to_thread(self.redis.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(self.redis.start)
        record.note = "killed, 0.5 s down, restarted empty"

    async def fault_pg_pause(self, record: FaultRecord) -> None:
        self.proxy.pause()
        await asyncio.sleep(self.config.pg_pause)
        self.proxy.resume()
        record.note = f"no bytes to or from PostgreSQL for {self.config.pg_pause:g} s"

    async def fault_pg_cut(self, record: FaultRecord) -> None:
        self.proxy.cut()
        record.note = "every database connection reset"

    async def fault_client_cut(self, record: FaultRecord) -> None:
        for cl in self.clients:
            cl.abort()
        record.note = f"{len(self.clients)} client sockets aborted (RST)"

    def _slow_closes(self) -> int:
        return sum(s.log_text().count("slow client closed") for s in self._all_servers)

    async def fault_slow(self, record: FaultRecord) -> None:
        slow = [cl for cl in self.clients if cl.slow_capable]
        before = self._slow_closes()
        for cl in slow:
            cl.reading.clear()
        blasters = [self.room_clients[cl.room][0] for cl in slow]
        blob = "b" * BLOB
        deadline = time.monotonic() + 30
        sent = 0
        while time.monotonic() < deadline and self._slow_closes() < before + len(slow):
            for _ in range(25):
                for b in blasters:
                    if b.connected:
                        await b.draw({"n": b.n + 1, "blob": blob})
                        sent += 1
                await asyncio.sleep(0.005)
        closed = self._slow_closes() - before
        closed_after = time.monotonic() - self._t0
        for cl in slow:
            cl.reading.set()
        record.note = (f"{len(slow)} clients stopped reading; {sent} x {BLOB // 1000} kB messages; "
                       f"{closed} closes with 4408 within {closed_after:.1f} s (the stopped clients, and any "
                       f"reader that fell behind the flood)")

    @property
    def _all_servers(self) -> list[Any]:
        return self._servers_seen

    def _log_offsets(self) -> dict[str, int]:
        return {str(srv.log_path): srv.log_size() for srv in self._all_servers}

    def _server_errors_since(self, offsets: dict[str, int]) -> int:
        return sum(
            1
            for srv in self._all_servers
            for line in srv.log_text(offsets.get(str(srv.log_path), 0)).splitlines()
            if SERVER_ERROR_LINE.search(line)
        )

    async def inject(self, name: str) -> FaultRecord:
        acked_before = dict(self.max_acked)
        reconnects_before = sum(cl.reconnects for cl in self.clients)
        errors_before = self.errors
        t0 = self._t0 = time.monotonic()
        record = FaultRecord(name, injected_at=t0 - self.started)
        self.phase = name
        progress(f"fault {name}: injecting")
        await getattr(self, "fault_" + name.replace("-", "_"))(record)
        for s in self.cluster.servers:
            if s not in self._servers_seen:
                self._servers_seen.append(s)
        t_end = time.monotonic()
        record.lasted = t_end - t0
        await self._wait_recovered(record, t0, t_end, acked_before)
        record.reconnects = sum(cl.reconnects for cl in self.clients) - reconnects_before
        record.errors = self.errors - errors_before
        if record.recovered_after is None:
            progress(f"fault {name}: NOT recovered within {self.config.recover_timeout:g} s")
        else:
            progress(f"fault {name}: recovered after {record.recovered_after:.2f} s "
                     f"({record.reconnects} reconnects, {record.errors} error replies)")
        return record

    # -- the run --------------------------------------------------------------

    async def run(self) -> Result:
        cfg = self.config
        random.seed(cfg.seed)
        self._servers_seen = list(self.cluster.servers)
        result = Result(config=cfg)
        progress(f"connecting {cfg.rooms * cfg.clients_per_room} clients in {cfg.rooms} rooms")
        await self.start_clients()
        self.started = time.monotonic()
        self.min_connected = len(self.clients)
        progress(f"load on: {cfg.rooms * cfg.senders_per_room} senders at {cfg.rate:g} msg/s; warm-up {cfg.warmup:g} s")
        await self._quiet(cfg.warmup)
        for name in cfg.faults:
            offsets = self._log_offsets()
            record = await self.inject(name)
            result.faults.append(record)
            await self._quiet(cfg.gap)
            record.server_errors = self._server_errors_since(offsets)
        self.senders_stop = True
        result.duration = time.monotonic() - self.started
        progress(f"senders stopped after {result.duration:.1f} s; settling")
        await self._settle()
        result.slow_closes = self._slow_closes()
        self.verify(result)
        for cl in self.clients:
            await cl.stop()
        return result

    async def _quiet(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        last = 0.0
        while time.monotonic() < end:
            now = time.monotonic()
            if now - last >= 5:
                last = now
                acked = sum(len(cl.acked) for cl in self.clients)
                progress(f"  t={now - self.started:.0f} s: {acked}/{self.sent} acked, "
                         f"{self.connected()}/{len(self.clients)} connected")
            await asyncio.sleep(0.2)

    async def _settle(self) -> None:
        deadline = time.monotonic() + self.config.settle_timeout
        while time.monotonic() < deadline:
            if all(not cl.unacked and cl.connected for cl in self.clients):
                if all(cl.last_seq >= self.max_acked.get(cl.room, 0) for cl in self.clients):
                    # Everything acked has reached every client: give stragglers a moment.
                    await asyncio.sleep(0.5)
                    return
            await asyncio.sleep(0.1)
        progress("settle: timed out")

    def verify(self, result: Result) -> None:
        result.connections = len(self.clients)
        result.min_connected = self.min_connected
        result.sent = self.sent
        result.errors = self.errors
        for cl in self.clients:
            for reason, n in cl.errors.items():
                result.error_reasons[reason] = result.error_reasons.get(reason, 0) + n
        result.cursors_out = sum(cl.cursors_out for cl in self.clients)
        result.cursors_in = sum(cl.cursors_in for cl in self.clients)
        seen_counts = []
        for room in self.rooms:
            log = self.cluster.log(room, self.direct_database_url)
            result.in_log += len(log)
            seqs = [row[0] for row in log]
            if seqs != list(range(1, len(log) + 1)):
                result.problems.append(f"{room}: the log's seqs have a gap")
            keys = [(row[2], row[3]) for row in log if row[3]]
            result.duplicated_applied += len(keys) - len(set(keys))
            by_key = {(row[2], row[3]): row[0] for row in log}
            by_seq = {row[0]: row for row in log}
            for cl in self.room_clients[room]:
                result.acked += len(cl.acked)
                result.unacked_at_end += len(cl.unacked)
                for message_id, seq in cl.acked.items():
                    if by_key.get((cl.user, message_id)) != seq:
                        result.lost += 1
                        result.problems.append(f"{cl.user} {message_id} acked at {seq}, in the log at "
                                               f"{by_key.get((cl.user, message_id))}")
                result.duplicated_delivered += len(cl.duplicates)
                expected = set(range(cl.seen_from + 1, len(log) + 1))
                view_ok = set(cl.seen) == expected
                for seq, (user, message_id, payload) in cl.seen.items():
                    row = by_seq.get(seq)
                    if row is None or row[2] != user:
                        view_ok = False
                    elif message_id is not None and row[3] != message_id:
                        view_ok = False
                    elif message_id is None and row[4] != payload:
                        view_ok = False
                if not view_ok:
                    result.views_differing += 1
                    missing = sorted(expected - set(cl.seen))
                    result.problems.append(f"{cl.user}: view differs from the log (saw {len(cl.seen)}, "
                                           f"expected {len(expected)}, missing {missing[:5]})")
                seen_counts.append(len(cl.seen))
                result.seen_total += len(cl.seen)
                result.seen_expected += len(expected)
                result.problems += [f"{cl.user}: {p}" for p in cl.problems]
        result.seen_min = min(seen_counts, default=0)
        result.seen_max = max(seen_counts, default=0)


async def run_campaign(config: Config, directory: Path) -> Result:
    """Services, cluster, load, faults, verification; everything stopped after."""
    redis = PrivateRedis(directory, free_port())
    redis.start()
    try:
        with fresh_postgres_database() as direct_url, TcpProxy("127.0.0.1", urlsplit(direct_url).port or 5432) as proxy:
            parts = urlsplit(direct_url)
            proxied = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}"))
            progress(f"PostgreSQL via proxy :{proxy.port}, private Redis :{redis.port}; starting 2 daphne processes")
            cluster = await asyncio.to_thread(
                start_cluster,
                directory,
                proxied,
                redis.url,
                2,
                {
                    "DJANGO_DEBUG": "false",
                    # Production-like (DEBUG off) without the startup check's ERROR line.
                    "DORM_TOKEN_SECRET": "fault-campaign-" + "x" * 32,
                    "DORM_OUTBOUND_SOFT_BYTES": str(OUTBOUND_SOFT_BYTES),
                    "DORM_OUTBOUND_MAX_BYTES": str(OUTBOUND_MAX_BYTES),
                },
            )
            try:
                campaign = Campaign(config, cluster, redis, proxy, directory, direct_url)
                try:
                    return await campaign.run()
                finally:
                    for cl in campaign.clients:
                        if not cl.stopping:
                            await cl.stop()
            finally:
                await asyncio.to_thread(cluster.stop)
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the CI-sized campaign (a few rooms, short gaps)")
    parser.add_argument("--rooms", type=int)
    parser.add_argument("--clients", type=int, help="clients per room")
    parser.add_argument("--senders", type=int, help="senders per room")
    parser.add_argument("--rate", type=float, help="durable messages/s per sender")
    parser.add_argument("--gap", type=float, help="quiet seconds after each fault")
    parser.add_argument("--faults", help=f"comma-separated, in order (default: {','.join(ALL_FAULTS)})")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (server logs)")
    args = parser.parse_args(argv)
    config = Config.short() if args.short else Config()
    for name, attr in (("rooms", "rooms"), ("clients", "clients_per_room"), ("senders", "senders_per_room"),
                       ("rate", "rate"), ("gap", "gap")):
        value = getattr(args, name)
        if value is not None:
            setattr(config, attr, value)
    if args.faults:
        config.faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
        unknown = set(config.faults) - set(ALL_FAULTS)
        if unknown:
            parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(ALL_FAULTS)}")
    directory = Path(tempfile.mkdtemp(prefix="dorm-faults-"))
    import pytest  # the services helpers skip/fail through pytest's outcomes

    try:
        result = asyncio.run(run_campaign(config, directory))
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            progress(f"server logs kept in {directory}")
        else:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
    print(result.table())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
