"""The usage meter: counts in memory on the hot path, one per process.

The runtime calls it once per frame received, once per event fanned out (with
the number of sockets it reached, never per socket), once per group commit,
once per join and leave, and at each actor's wake and sleep. Each call is a
dict lookup and a few integer additions. ``billing/flush.py`` takes what was
counted and adds it to the database every ``FLUSH_SECONDS`` (a minute) by
upsert, so the rows of N processes add up.

Peak concurrent connections are counted where the room's joins and leaves all
arrive: in the room's owner (embedded: the process; distributed: the process
holding the lease), which keeps the set of connections it saw join. A minute
with traffic, a join or a leave has its own counters and peak; a silent minute
has none (an idle server counts and writes nothing): the room's level of
connections carries over, and the flush writes a ``ConnectionSpan`` only when
a minute ends with a level other than the one last written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from billing.conf import billing_settings
from billing.costs import Usage
from billing.histogram import bucket_of


def current_minute() -> int:
    """Minutes since the epoch (UTC)."""
    return int(time.time() // 60)


@dataclass(slots=True)
class Counters(Usage):
    """One room's usage during one minute, in this process (the same
    counters the cost model prices, plus latency histograms)."""

    minute: int = 0
    # Connections open at the end of the counted part of the minute, in a room
    # this process counts the connections of (None: it does not, e.g. it
    # holds some of the room's sockets but not its lease).
    connections_after: int | None = None
    # bucket -> count, per metric (billing.models.Metric)
    processing: dict[int, int] = field(default_factory=dict)
    round_trip: dict[int, int] = field(default_factory=dict)
    round_trip_long: dict[int, int] = field(default_factory=dict)

    def work(self) -> int:
        """What the room made this process do (CPU is apportioned by it)."""
        return (
            self.messages_in
            + self.messages_out
            + self.events_written
            + self.rows_read
            + self.connections_opened
            + self.connections_closed
        )


class Meter:
    def __init__(self) -> None:
        self.enabled = bool(billing_settings.METERING)
        self.minute = current_minute()
        # room slug -> counters of the current minute
        self.rooms: dict[str, Counters] = {}
        # counters of past minutes, not flushed yet
        self.pending: list[tuple[str, Counters]] = []
        # (what, code) -> count, all rooms: "close"/"error"
        self.ops: dict[tuple[str, str], int] = {}
        self.ops_pending: list[tuple[int, dict[tuple[str, str], int]]] = []
        # Rooms owned here: connection ids that joined and did not leave.
        self.live: dict[str, set[str]] = {}
        # Awake actors: room -> monotonic time awake time was counted up to.
        self.awake: dict[str, float] = {}
        # room -> the level of this process's open ConnectionSpan (what the
        # database holds once the pending span writes are done).
        self.span_levels: dict[str, int] = {}
        # Span changes whose write failed, tried again by the next flush
        # (each is idempotent): (room, first minute at the level, level).
        self.span_retry: list[tuple[str, int, int]] = []

    # -- the current minute -----------------------------------------------------

    def _counters(self, room: str) -> Counters:
        c = self.rooms.get(room)
        if c is None:
            live = self.live.get(room)
            c = self.rooms[room] = Counters(minute=self.minute, peak_connections=len(live) if live else 0)
        return c

    def rotate(self, minute: int | None = None) -> None:
        """Start a new minute: the old one's counters wait for the flush."""
        minute = current_minute() if minute is None else minute
        if minute == self.minute:
            return
        self.account_awake()
        self._close_minute()
        self.pending.extend(self.rooms.items())
        self.rooms = {}
        if self.ops:
            self.ops_pending.append((self.minute, self.ops))
            self.ops = {}
        self.minute = minute
        # A silent room gets no counters in the new minute: its open sockets
        # are billed through its connection span (its level carries over).

    def _close_minute(self) -> None:
        """Note each counted room's connections at the end of the counted part."""
        live = self.live
        levels = self.span_levels
        for room, c in self.rooms.items():
            conns = live.get(room)
            if conns or room in levels or c.connections_opened or c.connections_closed:
                c.connections_after = len(conns) if conns else 0

    def account_awake(self) -> None:
        now = time.monotonic()
        for room, since in self.awake.items():
            self._counters(room).actor_awake_ms += int((now - since) * 1000)
            self.awake[room] = now

    def take(self) -> tuple[list[tuple[str, Counters]], list[tuple[int, dict[tuple[str, str], int]]]]:
        """Everything counted so far (the current minute too); counting goes on."""
        self.rotate()
        self.account_awake()
        self._close_minute()
        taken = self.pending + list(self.rooms.items())
        ops = self.ops_pending + ([(self.minute, self.ops)] if self.ops else [])
        self.pending = []
        self.ops_pending = []
        self.ops = {}
        self.rooms = {}
        return taken, ops

    def span_changes(self, taken: list[tuple[str, Counters]]) -> list[tuple[str, int, int]]:
        """The connection-span writes the taken minutes call for, in order:
        (room, first minute at the new level, level); the failed writes of the
        last flush first. They count as written (``span_failed`` has them
        written again)."""
        changes, self.span_retry = self.span_retry, []
        levels = self.span_levels
        for room, c in taken:
            level = c.connections_after
            if level is None or level == levels.get(room, 0):
                continue
            changes.append((room, c.minute + 1, level))
            if level:
                levels[room] = level
            else:
                levels.pop(room, None)
        return changes

    def span_failed(self, changes: list[tuple[str, int, int]]) -> None:
        """The write of ``changes`` failed: the next flush writes them first,
        in order, which brings the database to ``span_levels``."""
        self.span_retry = changes + self.span_retry

    def spans_closed(self) -> None:
        """This process's spans were closed (a clean stop)."""
        self.span_levels = {}
        self.span_retry = []

    # -- hot path ---------------------------------------------------------------

    def frame_in(self, room: str, nbytes: int) -> None:
        if self.enabled:
            c = self.rooms.get(room) or self._counters(room)
            c.messages_in += 1
            c.bytes_in += nbytes

    def delivered(self, room: str, deliveries: int, nbytes: int) -> None:
        """One event reached ``deliveries`` local sockets, ``nbytes`` each."""
        if self.enabled:
            c = self.rooms.get(room) or self._counters(room)
            c.messages_out += deliveries
            c.bytes_out += deliveries * nbytes

    def processed(self, room: str, seconds: float) -> None:
        """Server processing time of one frame: received to fan-out written."""
        if self.enabled:
            h = (self.rooms.get(room) or self._counters(room)).processing
            b = bucket_of(seconds * 1000.0)
            h[b] = h.get(b, 0) + 1

    def round_trip(self, room: str, ms: float, long_session: bool) -> None:
        if self.enabled:
            c = self.rooms.get(room) or self._counters(room)
            b = bucket_of(ms)
            c.round_trip[b] = c.round_trip.get(b, 0) + 1
            if long_session:
                c.round_trip_long[b] = c.round_trip_long.get(b, 0) + 1

    def committed(self, room: str, events: int, rows: int, nbytes: int) -> None:
        if self.enabled:
            c = self.rooms.get(room) or self._counters(room)
            c.events_written += events
            c.rows_written += rows
            c.storage_bytes_written += nbytes

    def rows_read(self, room: str, rows: int) -> None:
        if self.enabled and rows:
            (self.rooms.get(room) or self._counters(room)).rows_read += rows

    def alarm_fired(self, room: str) -> None:
        """For the alarms work: call once per alarm delivered to a room."""
        if self.enabled:
            (self.rooms.get(room) or self._counters(room)).alarms_fired += 1

    def op(self, what: str, code: str) -> None:
        """A close code, an error reason or a keepalive's type (all rooms, bounded labels)."""
        if self.enabled:
            key = (what, code)
            self.ops[key] = self.ops.get(key, 0) + 1

    # -- joins, leaves, wake and sleep (per connection / per actor life) ----------

    def joined(self, room: str, conn_id: str) -> None:
        if not self.enabled:
            return
        conns = self.live.get(room)
        if conns is None:
            conns = self.live[room] = set()
        conns.add(conn_id)
        c = self._counters(room)
        c.connections_opened += 1
        if len(conns) > c.peak_connections:
            c.peak_connections = len(conns)

    def left(self, room: str, conn_id: str) -> None:
        if not self.enabled:
            return
        conns = self.live.get(room)
        if conns is None or conn_id not in conns:
            return  # joined before this process owned the room, or never joined
        conns.discard(conn_id)
        if not conns:
            del self.live[room]
        self._counters(room).connections_closed += 1

    def connections(self, room: str) -> int:
        conns = self.live.get(room)
        return len(conns) if conns else 0

    def woke(self, room: str) -> None:
        if self.enabled:
            self.awake[room] = time.monotonic()

    def slept(self, room: str) -> None:
        since = self.awake.pop(room, None)
        if since is not None and self.enabled:
            self._counters(room).actor_awake_ms += int((time.monotonic() - since) * 1000)


    def reset(self) -> None:
        """Forget everything (tests; the hot path keeps its reference)."""
        self.__init__()  # type: ignore[misc]


# The process's meter. Import it (``from billing.meter import meter``): it is
# never replaced, only reset.
meter = Meter()


# ``op`` kind of a keepalive frame (``ping``, ``heartbeat``: the code), counted
# for all rooms instead of as the room's messages (docs/billing.md).
KEEPALIVE_OP = "alive"

# Close codes a client can receive or send; anything else is "other", so the
# close-code counts (admin, /metrics) have a bounded set of labels.
KNOWN_CLOSE_CODES = frozenset({1000, 1001, 1005, 1006, 1008, 1009, 1011, 1012, 1013, 4400, 4401, 4402, 4403, 4404, 4409, 4429})


def close_label(code: int | None) -> str:
    return str(code) if code in KNOWN_CLOSE_CODES else "other"
