"""Load generator of the fan-out benchmark: one room, N clients, S senders.

One asyncio process drives every client. Senders are open-loop: they follow a
fixed schedule and never wait for acks, so an overloaded server shows up as
latency and loss instead of silently lowering the offered load (only a socket
whose server stopped reading holds a sender back).

Every draw carries its message number ``k`` and its send time ``t``
(``perf_counter_ns``), both as strings: the whiteboard bounds payload numbers
to +/-1e6, so neither fits in a number. The receiving client takes the
latency from ``t``; ``k`` counts deliveries per message (loss, duplicates).
Acks carry only the client id, so ack latency comes from the send times kept
here.

The clients are a minimal WebSocket implementation on asyncio protocols
(handshake, unmasked server frames, masked client frames, ping/pong, close)
rather than the ``websockets`` client: that one costs ~30 us of CPU per
received frame, which caps one generator core near 30,000 deliveries/s, below
what the servers under test can send. Receivers also find ``k`` and ``t`` by
substring instead of parsing the JSON.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from array import array
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from websockets.utils import apply_mask  # C speedup when available

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Dorm writes compact JSON, the baseline json.dumps' ", " / ": " spacing.
_DRAW = (b'"type":"draw"', b'"type": "draw"')
_ACK = (b'"type":"ack"', b'"type": "ack"')
_K = b'"k":'
_T = b'"t":'


@dataclass(frozen=True)
class StepConfig:
    host: str
    port: int
    room: str
    message_rate: float  # draws/s offered, over all senders
    clients: int = 50
    senders: int = 5
    warmup_s: float = 1.0
    window_s: float = 5.0
    drain_s: float = 10.0
    connect_timeout_s: float = 15.0

    @property
    def fanout(self) -> int:
        # The sender does not get its own broadcast.
        return self.clients - 1


@dataclass
class StepResult:
    offered_messages_per_s: float
    offered_deliveries_per_s: float
    sent_messages_per_s: float
    achieved_deliveries_per_s: float
    messages: int
    expected_deliveries: int
    delivered: int
    lost: int
    lost_pct: float
    duplicates: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    acks: int
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    refused: dict[str, int]
    generator_cpu_pct: float
    server_cpu_pct: float | None
    # Busy share of the server's and the generator's cores (from /proc/stat)
    # not used by the server or the generator: other processes on the machine.
    other_server_core_pct: float | None
    other_generator_core_pct: float | None
    drain_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recorder:
    """Every send and every arrival of one step, in flat arrays."""

    def __init__(self) -> None:
        self.send_times = array("d")  # perf_counter() per message number, for acks
        self.deliveries = array("I")  # per message number
        self.latencies_ms = array("d")  # measured messages only
        self.ack_latencies_ms = array("d")
        self.acks = 0
        self.arrived = 0  # draws of any message, for the achieved rate
        self.refused: dict[str, int] = {}
        # Message numbers >= first_measured were sent in the window; out of
        # reach until the window opens.
        self.first_measured = 1 << 62

    def on_frame(self, data: bytes) -> None:
        head = data[:24]
        if _DRAW[0] in head or _DRAW[1] in head:
            now = time.perf_counter_ns()
            i = data.find(_K)
            if i < 0:
                return
            i = data.index(b'"', i + 4) + 1
            n = int(data[i : data.index(b'"', i)])
            self.arrived += 1
            self.deliveries[n] += 1
            if n >= self.first_measured:
                i = data.index(b'"', data.index(_T, i) + 4) + 1
                self.latencies_ms.append((now - int(data[i : data.index(b'"', i)])) / 1e6)
        elif _ACK[0] in head or _ACK[1] in head:
            now = time.perf_counter()
            n = int(orjson.loads(data)["id"])
            if n >= self.first_measured:
                self.acks += 1
                self.ack_latencies_ms.append((now - self.send_times[n]) * 1000.0)
        elif b'"error"' in head or b'"rate_limited"' in head or b'"close"' in head:
            frame = orjson.loads(data)
            kind = str(frame.get("reason") or frame.get("type"))
            self.refused[kind] = self.refused.get(kind, 0) + 1


class Client(asyncio.Protocol):
    """One WebSocket client connection, just enough of RFC 6455 for the benchmark."""

    def __init__(self, rec: Recorder, host: str, port: int, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.rec = rec
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.fragments: list[bytes] | None = None
        self.welcome: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.writable = asyncio.Event()
        self.writable.set()

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"connection lost before welcome: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if not status.startswith(b"HTTP/1.1 101"):
                if not self.welcome.done():
                    self.welcome.set_exception(ConnectionError(f"handshake refused: {status!r}"))
                self.transport.close()  # type: ignore[union-attr]
                del buf[:]
                return
            self.upgraded = True
            del buf[: end + 4]
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, length = buf[pos], buf[pos + 1] & 0x7F  # server frames are never masked
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            pos = end
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
        del buf[:pos]

    # -- frames ---------------------------------------------------------------------

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (1, 2) or opcode == 0:  # text, binary, continuation
            if not fin:
                self.fragments = (self.fragments or []) + [payload]
                return
            if self.fragments is not None:
                payload, self.fragments = b"".join(self.fragments) + payload, None
            if self.welcome.done():
                self.rec.on_frame(payload)
            else:
                self.welcome.set_result(orjson.loads(payload))
        elif opcode == 9:  # ping
            self._write(0x8A, payload)
        elif opcode == 8:  # close: answer it, the server closes the TCP connection
            self._write(0x88, payload[:2])
            if not self.closed.done():
                self.closed.set_result(None)

    def _write(self, b0: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        mask = os.urandom(4)
        if n < 126:
            head = struct.pack("!BB", b0, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", b0, 0x80 | 127, n)
        self.transport.write(head + mask + apply_mask(payload, mask))

    def send_text(self, payload: bytes) -> None:
        self._write(0x81, payload)

    async def close(self, timeout: float) -> None:
        self._write(0x88, struct.pack("!H", 1000))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except asyncio.TimeoutError:
            pass
        if self.transport is not None:
            self.transport.close()


async def _open(cfg: StepConfig, rec: Recorder, user: str) -> Client:
    loop = asyncio.get_running_loop()
    path = f"/ws/{cfg.room}?userId={user}"
    _, client = await loop.create_connection(lambda: Client(rec, cfg.host, cfg.port, path), cfg.host, cfg.port)
    welcome = await client.welcome
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"{user}: first frame is {welcome.get('type')!r}, not welcome: {welcome}")
    return client


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of proc(5); index 11 and 12 after the ")" split.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def user_seconds(pid: int) -> float | None:
    """User-space CPU seconds of a process (utime), from /proc: the share a
    change to Python code moves; system calls and the kernel's network
    stack (on loopback, the peer's receive too) are in stime."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) / _CLK_TCK


def core_times(cores: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per core, from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name.startswith("cpu") and name != "cpu" and int(name[3:]) in cores:
                    v = [int(x) for x in values[:8]]
                    idle = v[3] + v[4]  # idle + iowait
                    out[int(name[3:])] = (sum(v) - idle, sum(v))
    except OSError:
        pass
    return out


def _busy_pct(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int) -> float | None:
    if core not in before or core not in after:
        return None
    busy, total = after[core][0] - before[core][0], after[core][1] - before[core][1]
    return 100.0 * busy / total if total else None


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _send(client: Client, rec: Recorder, rate: float, start: float, stop: float) -> None:
    interval = 1.0 / rate
    due = start
    while True:
        now = time.perf_counter()
        if now >= stop:
            return
        if due > now:
            # Never past `stop`: the window must last what it says.
            await asyncio.sleep(min(due, stop) - now)
            continue
        if not client.writable.is_set():
            # The server stopped reading this socket: that is pushback.
            await asyncio.wait_for(client.writable.wait(), max(0.001, stop - now))
            continue
        # Open loop: a late sender catches up instead of skipping.
        n = len(rec.send_times)
        rec.deliveries.append(0)
        rec.send_times.append(time.perf_counter())
        t = time.perf_counter_ns()
        client.send_text(b'{"type":"draw","id":"%d","payload":{"x":1,"y":2,"k":"%d","t":"%d"}}' % (n, n, t))
        due += interval


async def run_step(
    cfg: StepConfig, server_pid: int | None, server_core: int | None = None, generator_core: int | None = None
) -> StepResult:
    rec = Recorder()
    users = [f"s{i}" if i < cfg.senders else f"r{i}" for i in range(cfg.clients)]
    opening = [asyncio.ensure_future(_open(cfg, rec, u)) for u in users]
    try:
        clients = await asyncio.wait_for(asyncio.gather(*opening), cfg.connect_timeout_s)
    except BaseException:
        for fut in opening:
            fut.cancel()
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().transport.close()  # type: ignore[union-attr]
        raise
    try:
        # Let the join announcements (clients x (clients - 1) frames) pass.
        await asyncio.sleep(0.5)
        loop_start = time.perf_counter()
        window_start = loop_start + cfg.warmup_s
        window_end = window_start + cfg.window_s
        per_sender = cfg.message_rate / cfg.senders
        writers = [
            # Staggered so that the senders do not fire in lockstep.
            asyncio.create_task(_send(c, rec, per_sender, loop_start + i / cfg.message_rate, window_end))
            for i, c in enumerate(clients[: cfg.senders])
        ]
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        rec.first_measured = len(rec.send_times)
        rec.refused.clear()  # count refusals of measured messages only
        arrived0, cpu0, wall0 = rec.arrived, time.process_time(), time.perf_counter()
        srv0 = cpu_seconds(server_pid) if server_pid else None
        cores = tuple(c for c in (server_core, generator_core) if c is not None)
        cores0 = core_times(cores)
        await asyncio.wait_for(asyncio.gather(*writers), cfg.window_s + cfg.warmup_s + 5.0)
        wall = time.perf_counter() - wall0
        arrived = rec.arrived - arrived0
        gen_cpu = (time.process_time() - cpu0) / wall * 100.0
        srv1 = cpu_seconds(server_pid) if server_pid else None
        srv_cpu = (srv1 - srv0) / wall * 100.0 if srv0 is not None and srv1 is not None else None
        cores1 = core_times(cores)
        core_busy = {c: _busy_pct(cores0, cores1, c) for c in cores}
        other_srv = other_gen = None
        if server_core is not None and core_busy.get(server_core) is not None and srv_cpu is not None:
            other_srv = max(0.0, core_busy[server_core] - srv_cpu)  # type: ignore[operator]
        if generator_core is not None and core_busy.get(generator_core) is not None:
            other_gen = max(0.0, core_busy[generator_core] - gen_cpu)  # type: ignore[operator]
        last_measured = len(rec.send_times)
        drained = await _drain(rec, cfg, last_measured)
    finally:
        await asyncio.gather(*(c.close(2.0) for c in clients), return_exceptions=True)
    return summarise(cfg, rec, last_measured, wall, arrived, gen_cpu, srv_cpu, (other_srv, other_gen), drained)


async def _drain(rec: Recorder, cfg: Any, last_measured: int) -> float:
    """Wait until every measured delivery and ack is in, 2 s without progress, or drain_s.

    ``cfg``: anything with ``fanout`` and ``drain_s`` (a StepConfig, _rooms' RoomsConfig)."""
    start = time.perf_counter()
    messages = last_measured - rec.first_measured
    expected = messages * cfg.fanout + messages
    seen, progress_at = -1, start
    while (now := time.perf_counter()) - start < cfg.drain_s:
        got = len(rec.latencies_ms) + rec.acks
        if got >= expected:
            break
        if got != seen:
            seen, progress_at = got, now
        elif now - progress_at > 2.0:
            break
        await asyncio.sleep(0.05)
    return time.perf_counter() - start


def summarise(
    cfg: StepConfig | Any,
    rec: Recorder,
    last_measured: int,
    wall: float,
    arrived: int,
    gen_cpu: float,
    srv_cpu: float | None,
    other: tuple[float | None, float | None],
    drained: float,
) -> StepResult:
    first = rec.first_measured
    messages = last_measured - first
    expected = messages * cfg.fanout
    counts = rec.deliveries[first:last_measured]
    delivered = sum(min(c, cfg.fanout) for c in counts)
    duplicates = sum(c - cfg.fanout for c in counts if c > cfg.fanout)
    lat = sorted(rec.latencies_ms)
    ack = sorted(rec.ack_latencies_ms)
    lost = expected - delivered
    return StepResult(
        offered_messages_per_s=cfg.message_rate,
        offered_deliveries_per_s=cfg.message_rate * cfg.fanout,
        sent_messages_per_s=messages / wall,
        achieved_deliveries_per_s=arrived / wall,
        messages=messages,
        expected_deliveries=expected,
        delivered=delivered,
        lost=lost,
        lost_pct=100.0 * lost / expected if expected else 0.0,
        duplicates=duplicates,
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        max_ms=lat[-1] if lat else None,
        acks=rec.acks,
        ack_p50_ms=percentile(ack, 0.50),
        ack_p99_ms=percentile(ack, 0.99),
        refused=dict(rec.refused),
        generator_cpu_pct=gen_cpu,
        server_cpu_pct=srv_cpu,
        other_server_core_pct=other[0],
        other_generator_core_pct=other[1],
        drain_s=drained,
    )
