"""The room actor: one writer per room, frames handled one at a time.

Life of an actor::

    wake  -> load the room (snapshot + log tail), run the kind's on_start;
             nothing is handled before this is done (a failure refuses what
             is queued and the next item starts a fresh actor: start once,
             retry on failure)
    loop  -> take every item queued (a batch); validate and sequence frames,
             folding durable events into the state; group-commit the batch's
             durable events in one transaction; only then broadcast and ack
             them (the output gate)
    sleep -> after HIBERNATE_AFTER_SECONDS without items (timer ticks do
             not count): stop the timers, snapshot, record the awake time,
             leave memory; connections stay open and the next item (a frame,
             a join, a due alarm) wakes a new actor from the database

Joins, leaves and calls first commit what is staged, so a welcome never shows
an uncommitted event. Ephemeral events skip the log and are broadcast while
the batch is handled (they may overtake durable events staged before them in
the same batch; they never overtake a committed one).

While a commit or reload is in flight, ephemeral frames and presence signals
queued meanwhile are served by a side task (``_serve_while``); everything else
waits for it. A database that is unreachable or over its deadline
(db_watchdog.py) degrades the room instead of stopping it: durable frames get
``internal`` at once, joins 1013, and the room reloads itself in the
background (docs/runtime.md, "Database outage").
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError
from django.utils import timezone

from presence.backends.base import DEFAULT_STATUS, JoinEffect
from presence.coalesce import PresenceCoalescer
from presence.roster import Roster
from presence.process import PROCESS_ID
from presence.service import OFFLINE_FRAME, ONLINE_FRAME
from rooms import signals
from billing import budgets
from billing.flush import ensure_flusher
from billing.meter import meter
from rooms.conf import dorm_settings
from rooms.kinds import kind_class
from rooms.kinds.base import DurableEvent, Incoming, Reject, RoomKind
from rooms.protocol import CloseCode, ErrorReason, ack_frame, dumps, event_frame, now_ms
from rooms.runtime import alarms as alarm_rows
from rooms.runtime import committer
from rooms.runtime import persistence
from rooms.runtime.alarms import AlarmBook
from rooms.runtime.cluster import LeaseLost
from rooms.runtime.db_watchdog import guarded, hot_guarded, is_unavailable
from rooms.runtime.messages import SERVER_PEER, AlarmDue, Binary, Call, Frame, Item, Join, Leave, Peer, Tick
from rooms.runtime.persistence import LogRow, RoomNotFound
from rooms.runtime.storage import RoomStorage
from rooms.runtime.timers import Timer, TimerFn, Timers, run_timer
from rooms.schema import Invalid

if TYPE_CHECKING:
    from rooms.runtime.registry import Runtime

log = logging.getLogger("dorm.rooms")

# Every database call of an actor runs under the watchdog's deadline
# (db_watchdog.py, DORM_DB_TIMEOUT_SECONDS): a database that stops answering
# fails the call instead of stopping the room.
# A wake's and a sleep's database work, one hop each (a storm of wakes makes
# them hot: hot_guarded, as the commit).
db_wake_room = hot_guarded(persistence.wake_room)
db_sleep_room = hot_guarded(persistence.sleep_room)
db_reload_room = guarded(persistence.reload_room)
# Group commit across rooms (committer.py); tests replace it to fail commits.
db_commit_batch = committer.commit_batch
db_log_after = guarded(persistence.log_after)
db_save_snapshot = guarded(persistence.save_snapshot)
db_end_run = guarded(persistence.end_run)
db_alarm_is_current = guarded(alarm_rows.alarm_is_current)
db_record_alarm_failure = guarded(alarm_rows.record_failure)

# A degraded room retries loading itself after this long, doubling up to the max.
RECOVERY_BACKOFF_SECONDS = 0.5
RECOVERY_BACKOFF_MAX_SECONDS = 1.0
STORAGE_UNAVAILABLE = "storage unavailable, retry later"


# A snapshot costs its whole state (serialized on the event loop, written with
# an fsync) and the log since the last one grows by one event at a time. Up
# to this size a room snapshots every SNAPSHOT_EVERY_EVENTS events; a bigger
# state (a whiteboard with thousands of strokes) also waits until the log
# since its last snapshot is as large as that snapshot, so snapshots cost at
# most about what the log costs instead of growing with the state on every
# SNAPSHOT_EVERY_EVENTS events (docs/runtime.md, "Snapshots").
SNAPSHOT_ALWAYS_BYTES = 64 * 1024


class StorageUnavailable(RuntimeError):
    """The room cannot reach its database right now (a Call refused while degraded)."""

# Most client ids remembered per room for idempotent retries. The window is
# DEDUP_WINDOW_SECONDS; past this many ids (a room over ~1,600 identified
# messages/s for ten minutes) the oldest are forgotten first.
DEDUP_MAX_IDS = 1_000_000
# An ephemeral message's id maps to this "seq": ack again without a seq.
EPHEMERAL = 0


@dataclass(slots=True)
class Staged:
    """A durable event sequenced and folded, waiting for its commit."""

    seq: int
    peer: Peer
    client_id: str | None
    text: str
    row: persistence.EventRow
    message: Incoming
    received: float


def _overrides(kind: RoomKind, hook: str) -> bool:
    return getattr(type(kind), hook) is not getattr(RoomKind, hook)


class RoomContext:
    """What a room kind's hooks may use: the room's state, storage and sends."""

    def __init__(self, actor: RoomActor) -> None:
        self._actor = actor

    @property
    def slug(self) -> str:
        return self._actor.slug

    @property
    def state(self) -> Any:
        return self._actor.state

    @property
    def seq(self) -> int:
        """The last committed seq."""
        return self._actor.last_seq

    @property
    def storage(self) -> RoomStorage:
        return self._actor.storage

    @property
    def kind(self) -> RoomKind:
        return self._actor.kind

    async def broadcast(self, type_: str, payload: Any, *, user_id: str = "", exclude: str | None = None) -> None:
        """An ephemeral server event to every connection of the room."""
        text = event_frame(type_, None, user_id, "" if payload is None else dumps(payload), now_ms())
        await self._actor.runtime.transport.broadcast(self._actor.slug, text, None, exclude)

    async def send(self, peer: Peer, frame: dict[str, Any]) -> None:
        await peer.reply(dumps(frame))

    # -- binary kinds (accepts_binary; their sockets get no JSON frames) ------------

    async def send_bytes(self, peer: Peer, data: bytes) -> None:
        """A binary frame to one connection (on this process or, over the room bus, another)."""
        await peer.send_bytes(data)

    async def broadcast_bytes(self, data: bytes, *, exclude: str | None = None) -> None:
        """A binary frame to every binary connection of the room but ``exclude``."""
        await self._actor.runtime.transport.broadcast_bytes(self._actor.slug, data, exclude)

    def publish(self, type_: str, payload: Any = None, *, user_id: str = "") -> int:
        """A durable server event of one of the kind's types: validated,
        checked, sequenced and folded now; committed and broadcast to every
        connection with the group commit that ends the current turn. Returns
        its seq. Raises :class:`~rooms.kinds.base.Reject` or ``Invalid``."""
        return self._actor.stage_server_event(type_, payload, user_id)

    # -- durable alarms (rows; they survive sleep, restarts and deploys) ------------

    def set_alarm(self, at: datetime | float, name: str = "") -> None:
        """Run ``on_alarm(room, name)`` at ``at`` (aware datetime or Unix seconds).

        Replaces the alarm of that name. Committed with the current turn's
        group commit, like storage writes."""
        self._actor.alarms.set(alarm_rows.check_name(name), alarm_rows.as_datetime(at))

    def get_alarm(self, name: str = "") -> datetime | None:
        """When the alarm ``name`` is due; None if unset (and inside its own run)."""
        return self._actor.alarms.get(name)

    def delete_alarm(self, name: str = "") -> None:
        self._actor.alarms.delete(alarm_rows.check_name(name))

    def list_alarms(self) -> dict[str, datetime]:
        return self._actor.alarms.all()

    @property
    def alarm_retry_count(self) -> int:
        """Inside ``on_alarm``: how many earlier attempts of this alarm failed."""
        return self._actor.alarm_retry_count

    def stay_awake(self, seconds: float) -> None:
        """Do not hibernate for at least ``seconds`` from now, even if idle
        (the dispatcher wakes a room ahead of its alarm with this)."""
        self._actor.stay_awake(seconds)

    # -- in-memory timers (awake only; stopped on hibernation) -----------------------

    def after(self, seconds: float, fn: TimerFn) -> Timer:
        """Run ``fn(room)`` once in ``seconds``, inside the actor, if still awake."""
        return self._actor.timers.after(seconds, fn)

    def every(self, seconds: float, fn: TimerFn) -> Timer:
        """Run ``fn(room)`` every ``seconds`` while the room is awake."""
        return self._actor.timers.every(seconds, fn)


class RoomActor:
    def __init__(self, slug: str, runtime: Runtime) -> None:
        self.slug = slug
        self.runtime = runtime
        self._items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.started = False
        self._broken = False
        self.room_id = 0
        self.kind: RoomKind = RoomKind()
        self.state: Any = None
        self.last_seq = 0  # committed
        self._next_seq = 1
        self._staged: list[Staged] = []
        self._late_acks: list[tuple[Peer, str, int]] = []
        self._dedup: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._dedup_expiry: deque[tuple[float, tuple[str, str]]] = deque()
        self._recent: deque[tuple[int, str]] = deque(maxlen=dorm_settings.RECENT_FRAMES_KEPT)
        self._since_snapshot = 0
        self._since_snapshot_bytes = 0  # payload bytes of the log after the latest snapshot
        self._snapshot_bytes = 0  # size of the latest snapshot
        self.storage = RoomStorage(0)
        self.alarms = AlarmBook()
        self.alarm_retry_count = 0
        self.timers = Timers(self.submit)
        self.context = RoomContext(self)
        self._run_id: int | None = None
        self.awake_since = time.monotonic()
        self._active_at = self.awake_since  # end of the last batch that was not only timer ticks
        self._awake_until = 0.0  # monotonic; stay_awake()
        self.task: asyncio.Task[None] | None = None
        self._stop_requested = False
        self._aborted = False
        # Who is here, for welcomes (presence/roster.py); loaded at wake.
        self.roster = Roster()
        # user_joined / user_left / presence, at most one per room per window
        # (wider in a room with many connections).
        self.presence_out = PresenceCoalescer(slug, runtime.transport, self.roster.connections)
        # The rest of the batch being handled (``_serve_while`` may take
        # independent items out of it while the database works).
        self._pending: deque[Item] = deque()
        # Serve independent items while awaiting the database (off while
        # starting and going to sleep).
        self._pipelining = False
        self._in_db = False  # awaiting database work inside _serve_while
        self._side: asyncio.Task[None] | None = None
        # Storage unavailable: the state may hold events that failed; only
        # ephemeral traffic and presence are served until a reload succeeds.
        self.degraded = False
        self._degraded_at = 0.0
        self._backoff = RECOVERY_BACKOFF_SECONDS

    # -- inbox ----------------------------------------------------------------

    def submit(self, item: Item) -> None:
        self._items.append(item)
        if self._in_db and self._side is None and self._may_go_ahead(item):
            self._start_side()  # serve it while the database works
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stay_awake(self, seconds: float) -> None:
        self._awake_until = max(self._awake_until, time.monotonic() + seconds)

    def request_stop(self) -> None:
        """Finish what is queued, then sleep as after the idle timeout (shutdown)."""
        self._stop_requested = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self) -> None:
        """Stop at once (lease lost): nothing more is committed or snapshotted."""
        self._aborted = True
        self._broken = True
        self.presence_out.cancel()
        self.timers.cancel_all()
        if self.task is not None:
            self.task.cancel()

    async def _next_batch(self) -> list[Item] | None:
        """Every queued item (up to the batch limit); None after the idle timeout.

        Idle means no item but timer ticks since the last active batch, so a
        running ``every`` timer does not keep a room awake forever."""
        items = self._items
        while True:
            if not items and self._stop_requested:
                return None
            remaining = (
                max(self._active_at + dorm_settings.HIBERNATE_AFTER_SECONDS, self._awake_until) - time.monotonic()
            )
            if remaining <= 0 and all(type(i) is Tick for i in items):
                items.clear()  # late ticks of timers that stop with the sleep
                return None
            if items:
                break
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(remaining, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        limit = dorm_settings.MAX_BATCH_EVENTS
        if len(items) <= limit:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(limit)]
        return batch

    # -- life -----------------------------------------------------------------

    async def run(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            # The same room's previous actor may still be writing its sleep
            # snapshot; wait so the two never overlap.
            await asyncio.wait([previous])
        try:
            await self._start()
        except Exception as exc:
            self.runtime.registry.retire(self)
            await self._end_failed_run()
            await self._refuse_queued(exc)
            await self.runtime.actor_stopped(self.slug, True)
            return
        reason = "idle"
        clean = True
        self._pipelining = True
        try:
            while True:
                if self.degraded:
                    if self._stop_requested:
                        self.runtime.registry.retire(self)
                        if self._items:
                            await self._serve_while(asyncio.sleep(0))
                        break
                    await self._recover_step()
                    continue
                batch = await self._next_batch()
                if batch is None:
                    # Retire before any await: an item submitted from now on
                    # wakes a new actor instead of landing in this one.
                    self.runtime.registry.retire(self)
                    if self._items:  # pragma: no cover - defensive, retire is synchronous
                        continue
                    break
                await self._handle_batch(batch)
                if any(type(item) is not Tick for item in batch):
                    self._active_at = time.monotonic()
                # Let go of it before waiting for the next one: a room whose
                # last batch was its members leaving would otherwise hold
                # every one of their closed sockets (a Leave holds its
                # connection, and that its server protocol) for as long as it
                # stays awake with nothing to do.
                del batch
        except asyncio.CancelledError:
            reason = "lease_lost" if self._aborted else "shutdown"
            clean = not self._aborted
            raise
        except Exception:
            reason = "error"
            clean = False
            log.exception("actor crashed room=%s", self.slug)
        finally:
            self._pipelining = False
            if self._stop_requested and reason == "idle":
                reason = "shutdown"
            self.runtime.registry.retire(self)
            await self._sleep(reason)
            # Whatever arrived after a crash is refused, never silently dropped.
            if self._items:
                await self._refuse_queued(None)
            await self.runtime.actor_stopped(self.slug, clean and not self._broken and not self.degraded)
            # The context is the actor's last reference cycle (actor ->
            # context -> actor): dropped here, a sleeping room's state and
            # objects go at once, by reference counting, instead of at the
            # cyclic collector's next pass over the oldest generation (an
            # idle server makes few). A kind that kept the context keeps the
            # actor with it, as before.
            self.context = None  # type: ignore[assignment]

    async def _start(self) -> None:
        await self._load()
        if self.runtime.cluster is not None:
            self.runtime.cluster.adopted(self.slug, self.last_seq)
        await self.roster.load(self.runtime.presence, self.slug)
        self.awake_since = self._active_at = time.monotonic()
        self.started = True
        meter.woke(self.slug)
        # A room can run here with no local socket (REST publish, alarms).
        ensure_flusher()
        if _overrides(self.kind, "on_start"):
            await self.kind.on_start(self.context)
            await self._flush()
        log.info("wake room=%s kind=%s seq=%d", self.slug, self.kind.name, self.last_seq)

    async def _load(self) -> None:
        create_kind = dorm_settings.DEFAULT_KIND if dorm_settings.AUTO_CREATE_ROOMS else None
        window_ms = int(dorm_settings.DEDUP_WINDOW_SECONDS * 1000)
        woken = await db_wake_room(self.slug, create_kind, now_ms() - window_ms, DEDUP_MAX_IDS, timezone.now())
        self._run_id = woken.run_id
        self._apply_loaded(woken.loaded, woken.alarms)

    def _apply_loaded(self, loaded: persistence.LoadedRoom, alarms: Any) -> None:
        self.room_id = loaded.room_id
        meter.rows_read(self.slug, len(loaded.tail) + len(loaded.recent_ids) + (loaded.snapshot_state is not None))
        self.kind = kind_class(loaded.kind)(loaded.settings)
        kind = self.kind
        state = (
            kind.initial_state()
            if loaded.snapshot_state is None
            else kind.load_state(orjson.loads(loaded.snapshot_state))
        )
        for seq, type_, user_id, _client_id, payload, ts in loaded.tail:
            state = kind.apply(state, DurableEvent(seq, type_, user_id, orjson.loads(payload) if payload else None, ts))
        self.state = state
        self.last_seq = loaded.last_seq
        self._next_seq = loaded.last_seq + 1
        self._since_snapshot = len(loaded.tail)
        self._since_snapshot_bytes = sum(len(row[4] or "") for row in loaded.tail)
        self._snapshot_bytes = len(loaded.snapshot_state or "")
        self._recent.clear()
        self._recent.extend((row[0], _frame_of(row)) for row in loaded.tail[-self._recent.maxlen :])  # type: ignore[operator]
        self._dedup.clear()
        self._dedup_expiry.clear()
        now = time.monotonic()
        wall_ms = now_ms()
        for user_id, client_id, seq, ts in loaded.recent_ids:
            key = (user_id, client_id)
            self._dedup[key] = seq
            expires = now + dorm_settings.DEDUP_WINDOW_SECONDS - (wall_ms - ts) / 1000
            self._dedup_expiry.append((expires, key))
        self.storage = RoomStorage(self.room_id)
        self.alarms = AlarmBook(alarms)

    async def _sleep(self, reason: str) -> None:
        self.timers.cancel_all()
        if not self.started:
            return
        if not self._broken and not self.degraded and not self._staged and _overrides(self.kind, "on_sleep"):
            # The kind's last writes (a Yjs document kept outside the log)
            # commit before the room leaves memory.
            try:
                await self.kind.on_sleep(self.context)
                await self._flush()
            except Exception:
                log.exception("on_sleep failed room=%s", self.slug)
        self.started = False
        if not self._aborted:
            try:
                # Before the lease goes: nothing of this room is sent after `released`.
                await self.presence_out.flush()
            except Exception:
                log.warning("presence flush at sleep failed room=%s", self.slug)
        meter.slept(self.slug)
        # A state holding uncommitted (staged) or failed events must never be
        # stored: the next wake rebuilds it from the log instead.
        clean = not self._broken and not self.degraded and not self._staged
        for staged in self._staged:
            await staged.peer.error(ErrorReason.INTERNAL, staged.client_id)
        self._staged = []
        try:
            awake_ms = int((time.monotonic() - self.awake_since) * 1000)
            snapshot = self._snapshot_text() if self._since_snapshot and clean else None
            await db_sleep_room(self.room_id, None if snapshot is None else (self.last_seq, snapshot), self._run_id, awake_ms, reason)
            if snapshot is not None:
                self._snapshot_saved(snapshot)
            log.info("sleep room=%s reason=%s awake_ms=%d seq=%d", self.slug, reason, awake_ms, self.last_seq)
        except Exception as exc:
            # The log is complete without the snapshot; the next wake replays it.
            if is_unavailable(exc):
                log.warning("sleep bookkeeping failed room=%s error=%s", self.slug, type(exc).__name__)
            else:
                log.exception("sleep bookkeeping failed room=%s", self.slug)

    async def _end_failed_run(self) -> None:
        """A start that failed after its run was recorded (the presence
        backend unreachable, say) ends that run: no run is left open."""
        if self._run_id is None:
            return
        try:
            await db_end_run(self._run_id, 0, "error")
        except Exception as exc:
            log.warning("run end after a failed start failed room=%s error=%s", self.slug, type(exc).__name__)
        self._run_id = None

    async def _refuse_queued(self, exc: BaseException | None) -> None:
        not_found = isinstance(exc, RoomNotFound)
        if exc is not None and _unreachable(exc):
            log.warning("actor start failed room=%s error=%s (service unreachable)", self.slug, type(exc).__name__)
        elif exc is not None and not not_found:
            log.error("actor start failed room=%s error=%s", self.slug, type(exc).__name__, exc_info=exc)
        items, self._items = list(self._items), deque()
        for item in items:
            if isinstance(item, Join):
                item.peer.refused = True
                if not_found:
                    await item.peer.close(CloseCode.NOT_FOUND, "room does not exist")
                else:
                    await item.peer.close(CloseCode.TRY_AGAIN_LATER, "room unavailable, retry later")
            elif isinstance(item, Frame):
                await item.peer.error(ErrorReason.INTERNAL, item.client_id)
            elif isinstance(item, Call) and not item.future.done():
                item.future.set_exception(exc or RuntimeError("room actor stopped"))

    # -- batch ----------------------------------------------------------------

    async def _handle_batch(self, batch: list[Item]) -> None:
        pending = self._pending = deque(batch)
        while pending:
            item = pending.popleft()
            if self.degraded:
                await self._handle_now(item)
                continue
            try:
                if type(item) is Frame:
                    await self._on_frame(item)
                    continue
                await self._flush()
                if type(item) is Join:
                    await self._on_join(item)
                elif type(item) is Leave:
                    await self._on_leave(item)
                elif type(item) is Call:
                    await self._on_call(item)
                elif type(item) is AlarmDue:
                    await self._on_alarm(item)
                elif type(item) is Tick:
                    await self._on_tick(item)
                elif type(item) is Binary:
                    await self.kind.on_binary(self.context, item.peer, item.data)
            except Exception as exc:
                if self._broken:
                    raise
                await self._item_failed(item, exc)
        await self._flush()
        if self._staged or self.storage.has_writes() or self.alarms.has_writes():
            # Written by on_message hooks after the commit: commit them now,
            # not whenever the next frame comes.
            await self._flush()
        if self.storage.rows_read:
            meter.rows_read(self.slug, self.storage.take_rows_read())

    async def _on_frame(self, frame: Frame) -> None:
        peer = frame.peer
        if frame.type[0] == "$":
            await self._on_presence_signal(frame)
            return
        kind = self.kind
        mtype = kind.message_type(frame.type)
        if mtype is None:
            await peer.error(ErrorReason.UNKNOWN_TYPE, frame.client_id)
            return
        if not peer.may_send(mtype.scope):
            await peer.error(ErrorReason.FORBIDDEN, frame.client_id)
            return
        key = None
        if frame.client_id is not None:
            key = (peer.user_id, frame.client_id)
            prior = self._dedup.get(key)
            if prior is not None:
                if prior > self.last_seq:  # the original is staged: ack both after commit
                    self._late_acks.append((peer, frame.client_id, prior))
                else:
                    await peer.reply(ack_frame(frame.client_id, prior or None))
                return
        payload = frame.payload
        try:
            mtype.schema.validate(payload)
        except Invalid as exc:
            await peer.error(ErrorReason.INVALID_MESSAGE, frame.client_id, str(exc))
            return
        payload_bytes = b"" if payload is None else orjson.dumps(payload)
        if len(payload_bytes) > mtype.max_payload_bytes:
            detail = f"payload: larger than {mtype.max_payload_bytes} bytes"
            await peer.error(ErrorReason.INVALID_MESSAGE, frame.client_id, detail)
            return
        message = Incoming(frame.type, peer.user_id, payload)
        try:
            kind.check(self.state, message)
        except Reject as exc:
            await peer.error(ErrorReason.INVALID_MESSAGE, frame.client_id, str(exc), exc.code)
            return
        payload_json = payload_bytes.decode()
        ts = now_ms()
        if mtype.durable:
            if self.slug in budgets.blocked:  # an in-memory set, refreshed by billing
                await peer.error(budgets.OVER_BUDGET, frame.client_id, budgets.refusal_detail(self.slug))
                return
            if self.degraded:
                # Nothing can be committed: refuse now, consume no seq.
                await peer.error(ErrorReason.INTERNAL, frame.client_id, STORAGE_UNAVAILABLE)
                return
            seq = self._next_seq
            self._next_seq = seq + 1
            self.state = kind.apply(self.state, DurableEvent(seq, frame.type, peer.user_id, payload, ts))
            text = event_frame(frame.type, seq, peer.user_id, payload_json, ts)
            row = (self.room_id, seq, frame.type, peer.user_id, frame.client_id or "", payload_json, ts)
            self._staged.append(Staged(seq, peer, frame.client_id, text, row, message, frame.received))
            if key is not None:
                self._remember(key, seq)
            return
        if frame.type == "presence" and isinstance(payload, dict) and isinstance(payload.get("status"), str):
            status = payload["status"][:64]
            if await self.runtime.presence.set_status(self.slug, peer.id, peer.user_id, status, payload.get("meta")):
                self.roster.status(peer.user_id, peer.id, status)
        if mtype.relay:
            text = event_frame(frame.type, None, peer.user_id, payload_json, ts)
            await self.runtime.transport.broadcast(self.slug, text, None, peer.id)
        if frame.received:
            meter.processed(self.slug, time.perf_counter() - frame.received)
        if key is not None:
            self._remember(key, EPHEMERAL)
            await peer.reply(ack_frame(frame.client_id, None))  # type: ignore[arg-type]
        if _overrides(kind, "on_message"):
            await kind.on_message(self.context, message, None)

    def _remember(self, key: tuple[str, str], seq: int) -> None:
        self._dedup[key] = seq
        self._dedup_expiry.append((time.monotonic() + dorm_settings.DEDUP_WINDOW_SECONDS, key))
        if len(self._dedup) > DEDUP_MAX_IDS:
            self._dedup.popitem(last=False)

    def _expire_ids(self) -> None:
        now = time.monotonic()
        expiry = self._dedup_expiry
        while expiry and expiry[0][0] < now:
            _, key = expiry.popleft()
            self._dedup.pop(key, None)

    async def _flush(self) -> None:
        """Group commit: write what is staged in one transaction, then publish it."""
        staged = self._staged
        writes = self.storage.take_writes()
        alarm_writes = self.alarms.take_writes()
        if not staged and not writes and not alarm_writes:
            return
        self._staged = []
        late_acks, self._late_acks = self._late_acks, []
        if self.degraded:
            # Staged by a hook while storage is unavailable: refused like frames.
            await self._drop_staged(staged, late_acks)
            return
        cluster = self.runtime.cluster
        try:
            if cluster is not None:
                await cluster.confirm_lease(self.slug)
            # Independent items (ephemeral frames, presence) are served
            # while the commit runs; the rest waits for it (output gate).
            await self._serve_while(db_commit_batch(self.room_id, [s.row for s in staged], writes, alarm_writes))
        except Exception as exc:
            if isinstance(exc, LeaseLost) and cluster is not None:
                # Another process may run the room now: nothing of this batch
                # was written; stop here (the senders' sockets are reset and
                # they retry against the new owner).
                for st in staged:
                    await st.peer.error(ErrorReason.INTERNAL, st.client_id)
                self._broken = True
                cluster.room_failed(self.slug, "lease lost before commit")
                return
            await self._commit_failed(staged, late_acks, exc)
            return
        if any(w.op == "set" for w in alarm_writes):
            self.runtime.alarms_changed()
        transport = self.runtime.transport
        recent = self._recent
        if staged:
            self.last_seq = staged[-1].seq
        for s in staged:
            recent.append((s.seq, s.text))
            await transport.broadcast(self.slug, s.text, s.seq, s.peer.id)
            if s.client_id is not None:
                await s.peer.reply(ack_frame(s.client_id, s.seq))
        # Metered once per commit (and one histogram entry per event).
        if meter.enabled:
            written = sum(len(s.row[5]) for s in staged) + sum(len(v) for v in writes.values() if v is not None)
            meter.committed(self.slug, len(staged), len(staged) + len(writes), written)
            done = time.perf_counter()
            for s in staged:
                if s.received:
                    meter.processed(self.slug, done - s.received)
        for peer, client_id, seq in late_acks:
            await peer.reply(ack_frame(client_id, seq))
        self._expire_ids()
        if _overrides(self.kind, "on_message"):
            for s in staged:
                await self.kind.on_message(self.context, s.message, s.seq)
        if staged:
            signals.events_durable.send(None, room=self.slug, first_seq=staged[0].seq, last_seq=staged[-1].seq)
        self._since_snapshot += len(staged)
        self._since_snapshot_bytes += sum(len(s.row[5]) for s in staged)
        if self._since_snapshot >= dorm_settings.SNAPSHOT_EVERY_EVENTS and (
            self._snapshot_bytes <= SNAPSHOT_ALWAYS_BYTES or self._since_snapshot_bytes >= self._snapshot_bytes
        ):
            await self._save_snapshot()

    async def _commit_failed(self, staged: list[Staged], late_acks: list[tuple[Peer, str, int]], exc: Exception) -> None:
        # Nothing of the batch is visible to anyone: senders get `internal`,
        # the seqs are not consumed, and the state is rebuilt from the database
        # (the fold already applied the failed events in memory).
        log.warning(
            "commit failed room=%s events=%d first_seq=%s error=%s",
            self.slug,
            len(staged),
            staged[0].seq if staged else None,
            type(exc).__name__,
        )
        await self._drop_staged(staged, late_acks)
        self.storage.forget()
        if is_unavailable(exc):
            # The database does not answer (or not in time): do not wait for
            # it once more before answering the next frames. Degrade now and
            # reload in the background.
            self._degrade(exc)
            return
        await self._reload_state()

    async def _drop_staged(self, staged: list[Staged], late_acks: list[tuple[Peer, str, int]]) -> None:
        for s in staged:
            if s.client_id is not None:
                self._dedup.pop((s.peer.user_id, s.client_id), None)
            await s.peer.error(ErrorReason.INTERNAL, s.client_id)
        for peer, client_id, _seq in late_acks:
            await peer.error(ErrorReason.INTERNAL, client_id)

    async def _reload_state(self) -> None:
        """Rebuild the state from the database after a failed commit or handler."""
        try:
            loaded, alarms = await self._serve_while(self._fetch_reload())
            await self._reloaded(loaded, alarms)
        except Exception as exc:
            # The in-memory state still holds the failed events: never used
            # again. Serve what needs no storage and retry in the background.
            self._degrade(exc)

    def _fetch_reload(self) -> Any:
        window_ms = int(dorm_settings.DEDUP_WINDOW_SECONDS * 1000)
        return db_reload_room(self.slug, ids_since_ms=now_ms() - window_ms, ids_limit=DEDUP_MAX_IDS)

    async def _reloaded(self, loaded: persistence.LoadedRoom, alarms: Any) -> None:
        """Take the state read from the database; publish what an in-doubt commit wrote."""
        committed = self.last_seq
        found: list[LogRow] | None = []
        if loaded.last_seq > committed:
            # A commit reported as failed (aborted during COMMIT, or a lost
            # answer) did reach the database. Read it before taking the new
            # state (a failure here leaves the room as it was).
            tail = loaded.tail
            if tail and tail[0][0] <= committed + 1:
                found = [row for row in tail if row[0] > committed]
            else:
                found = await db_log_after(loaded.room_id, committed, loaded.last_seq)
                if len(found) != loaded.last_seq - committed:
                    found = None  # retention removed part of it
        self._apply_loaded(loaded, alarms)
        if self.last_seq > committed:
            # Its senders got `internal`; their retries are acked from the
            # log (the ids were reloaded). Everyone sees the events now, in
            # order, before anything newer.
            if found is None:
                log.warning("in-doubt events not replayable room=%s from=%d to=%d", self.slug, committed + 1, self.last_seq)
            else:
                transport = self.runtime.transport
                for row in found:
                    await transport.broadcast(self.slug, _frame_of(row), row[0], None)
                signals.events_durable.send(None, room=self.slug, first_seq=committed + 1, last_seq=self.last_seq)
            log.warning("in-doubt commit was committed room=%s first_seq=%d last_seq=%d", self.slug, committed + 1, self.last_seq)

    # -- storage unavailable (docs/runtime.md, "Database outage") -------------------

    def _degrade(self, exc: BaseException) -> None:
        if not self.degraded:
            self.degraded = True
            self._degraded_at = time.monotonic()
            self._backoff = RECOVERY_BACKOFF_SECONDS
            log.warning("storage unavailable room=%s seq=%d error=%s", self.slug, self.last_seq, type(exc).__name__)

    async def _recover_step(self) -> None:
        """One attempt to reload the room, after a backoff; items are served meanwhile."""
        await self._serve_while(asyncio.sleep(self._backoff))
        if self._stop_requested:
            return
        try:
            loaded, alarms = await self._serve_while(self._fetch_reload())
            # Whatever a hook staged while degraded is never committed (it
            # was folded into the state being replaced).
            staged, self._staged = self._staged, []
            late_acks, self._late_acks = self._late_acks, []
            self.storage.forget()
            await self._drop_staged(staged, late_acks)
            await self._reloaded(loaded, alarms)
        except Exception as exc:
            self._backoff = min(self._backoff * 2, RECOVERY_BACKOFF_MAX_SECONDS)
            log.info("storage still unavailable room=%s error=%s", self.slug, type(exc).__name__)
            return
        self.degraded = False
        log.warning(
            "storage recovered room=%s seq=%d after_ms=%d",
            self.slug,
            self.last_seq,
            int((time.monotonic() - self._degraded_at) * 1000),
        )

    async def _handle_degraded(self, item: Item) -> None:
        """An item while storage is unavailable: only what needs no storage is served."""
        t = type(item)
        if t is Frame:
            await self._on_frame(item)  # type: ignore[arg-type]  # durable ones get `internal`
        elif t is Join:
            peer = item.peer  # type: ignore[union-attr]
            if not peer.closed:
                peer.refused = True
                await peer.close(CloseCode.TRY_AGAIN_LATER, STORAGE_UNAVAILABLE)
        elif t is Leave:
            await self._on_leave(item)  # type: ignore[arg-type]
        elif t is Call:
            if not item.future.done():  # type: ignore[union-attr]
                item.future.set_exception(StorageUnavailable(STORAGE_UNAVAILABLE))  # type: ignore[union-attr]
        elif t is Tick:
            # A tick would run the kind on a state that may hold failed
            # events; the timer keeps its schedule.
            self.timers.due(item.timer)  # type: ignore[union-attr]
        elif t is AlarmDue:
            # Its row stays claimed; the dispatcher delivers it again.
            log.info("alarm skipped room=%s name=%s reason=storage_unavailable", self.slug, item.name)  # type: ignore[union-attr]
        elif t is Binary:
            # Binary sockets get no JSON errors: close, the client resyncs when back.
            await item.peer.close(CloseCode.TRY_AGAIN_LATER, STORAGE_UNAVAILABLE)  # type: ignore[union-attr]

    # -- pipelining: serve independent items while the database works ---------------

    def _may_go_ahead(self, item: Item) -> bool:
        """A cheap first look: could ``item`` be independent (see below)?

        Only such an item starts the side task: under a stream of durable
        frames every commit finds hundreds queued, and a side task would take
        each of them out of the inbox and put it back for nothing."""
        if self.degraded:
            return True
        if type(item) is not Frame:
            return False
        type_ = item.type
        if type_[0] == "$":
            return True
        mtype = self.kind.message_type(type_)
        return mtype is None or not (mtype.durable or _overrides(self.kind, "on_message"))

    def _independent(self, item: Item, blocked: set[str]) -> bool:
        """May ``item`` be handled before the database work in flight is done?

        Yes for what depends on no committed state and changes none: ephemeral
        frames of kinds without an ``on_message`` hook, presence signals,
        errors for unknown types. Not for durable frames, joins, leaves,
        calls, alarms, ticks, binary frames, nor any frame of a connection
        whose join or leave waits (``blocked``). While degraded everything
        is answered at once (nothing waits for storage).
        """
        if self.degraded:
            return True
        if type(item) is not Frame:
            peer = getattr(item, "peer", None)
            if peer is not None:
                blocked.add(peer.id)
            return False
        peer = item.peer
        if peer.id in blocked:
            return False
        if item.type[0] == "$":
            return True
        kind = self.kind
        mtype = kind.message_type(item.type)
        if mtype is None:
            return True
        if mtype.durable or _overrides(kind, "on_message"):
            return False
        if item.client_id is not None:
            prior = self._dedup.get((peer.user_id, item.client_id))
            if prior is not None and prior > self.last_seq:  # a durable id in flight
                return False
        return True

    async def _handle_now(self, item: Item) -> None:
        if type(item) is not Tick:
            self._active_at = time.monotonic()
        try:
            if self.degraded:
                await self._handle_degraded(item)
            else:
                await self._on_frame(item)  # type: ignore[arg-type]
        except Exception as exc:
            if self._broken:
                raise
            await self._item_failed(item, exc)

    async def _item_failed(self, item: Item, exc: Exception) -> None:
        """One item failed; the room goes on. A frame's sender gets `internal`."""
        if _unreachable(exc):
            log.warning("item failed room=%s item=%s error=%s", self.slug, type(item).__name__, type(exc).__name__)
        else:
            log.exception("item failed room=%s item=%s", self.slug, type(item).__name__, exc_info=exc)
        if type(item) is Frame:
            await item.peer.error(ErrorReason.INTERNAL, item.client_id)

    async def _serve_while(self, aw: Any) -> Any:
        """Await ``aw`` (database work) while handling the independent items queued.

        ``aw`` is awaited directly, so its database call is submitted exactly
        when it was before (in order with the room's other database work).
        If items are queued, or arrive, meanwhile, a side task handles the
        independent ones in order (the rest of the current batch first, then
        the inbox); every other item stays queued in order (back at the front
        of the inbox) and is handled after ``aw``. The side task finishes the
        item it is handling before the actor goes on: never two at once.
        """
        if not self._pipelining:
            return await aw
        self._in_db = True
        if any(map(self._may_go_ahead, self._items)) or any(map(self._may_go_ahead, self._pending)):
            self._start_side()
        try:
            result = await aw
        except BaseException as exc:
            self._in_db = False
            if isinstance(exc, asyncio.CancelledError):
                side = self._side
                if side is not None:
                    side.cancel()
                raise
            await self._join_side()
            raise
        self._in_db = False
        await self._join_side()
        return result

    def _start_side(self) -> None:
        if self._side is None:
            loop = asyncio.get_running_loop()
            # An empty context: never a request's (publish.py says why).
            self._side = loop.create_task(self._serve_side(), name="dorm-actor-side", context=contextvars.Context())

    async def _join_side(self) -> None:
        side = self._side
        if side is None:
            return
        self._wake()
        try:
            await asyncio.shield(side)
        except asyncio.CancelledError:
            side.cancel()
            raise

    async def _serve_side(self) -> None:
        blocked: set[str] = set()
        held: list[Item] = []
        items = self._items
        try:
            pending = self._pending
            if pending and self._in_db:
                keep: list[Item] = []
                while pending:
                    item = pending.popleft()
                    if self._in_db and self._independent(item, blocked):
                        await self._handle_now(item)
                    else:
                        keep.append(item)
                pending.extend(keep)
            loop = asyncio.get_running_loop()
            while self._in_db:
                while items and self._in_db:
                    item = items.popleft()
                    if self._independent(item, blocked):
                        await self._handle_now(item)
                    else:
                        held.append(item)
                if not self._in_db:
                    break
                waiter = self._waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None
        finally:
            if held:
                items.extendleft(reversed(held))
            self._side = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _save_snapshot(self) -> None:
        state_text = self._snapshot_text()
        await db_save_snapshot(self.room_id, self.last_seq, state_text)
        self._snapshot_saved(state_text)

    def _snapshot_text(self) -> str:
        return orjson.dumps(self.kind.dump_state(self.state)).decode()

    def _snapshot_saved(self, state_text: str) -> None:
        self._since_snapshot = 0
        self._since_snapshot_bytes = 0
        self._snapshot_bytes = len(state_text)

    # -- joins and leaves -------------------------------------------------------

    async def _on_join(self, join: Join) -> None:
        peer = join.peer
        if peer.closed:  # the client left before its turn
            return
        try:
            effect = await self._welcome(join)
        except Exception:
            # No welcome went out (the resume replay's read or the presence
            # entry failed: a database or Redis outage). Without an answer
            # the socket would wait for its client's own timeout (10 s in
            # the shipped clients) before retrying: tell it to retry now.
            if not peer.closed:
                peer.refused = True
                await peer.close(CloseCode.TRY_AGAIN_LATER, "room unavailable, retry later")
            raise
        if effect == "joined":
            # The room's first fresh user (the roster counts the joiner).
            if self.roster.fresh_users() == 1:
                signals.room_occupied.send(None, room=self.slug)
            signals.user_joined.send(None, room=self.slug, user_id=peer.user_id)
            await self.presence_out.joined(peer.user_id, peer.id)
        elif effect == "online":
            await self.presence_out.online(peer.user_id, peer.id, DEFAULT_STATUS)
        if _overrides(self.kind, "on_connect"):
            await self.kind.on_connect(self.context, peer)

    async def _welcome(self, join: Join) -> JoinEffect:
        """The join up to its welcome (sent last); the presence effect."""
        peer = join.peer
        last = self.last_seq
        since = join.since
        replay: list[str] | None = None
        if since is not None and since <= last and last - since <= dorm_settings.RESUME_MAX_EVENTS:
            replay = await self._frames_after(since)
        welcome: dict[str, Any] = {
            "type": "welcome",
            "room": self.slug,
            "kind": self.kind.name,
            "userId": peer.user_id,
            "connectionId": peer.id,
            "seq": last,
            "resumed": replay is not None,
        }
        if replay is None:
            welcome["state"] = self.kind.snapshot(self.state)
        presence = self.runtime.presence
        effect = await presence.join(self.slug, peer.id, peer.user_id, getattr(peer, "process", "") or PROCESS_ID)
        self.roster.join(peer.user_id, peer.id)
        welcome["presence"] = self.roster.welcome_json()
        meter.joined(self.slug, peer.id)
        await peer.open(dumps(welcome), last, replay or [])
        log.info(
            "join room=%s user=%s conn=%s since=%s resumed=%s seq=%d",
            self.slug,
            peer.user_id,
            peer.id,
            since,
            replay is not None,
            last,
        )
        return effect

    async def _frames_after(self, since: int) -> list[str] | None:
        """The committed events after ``since`` as broadcast frames; None if not all kept."""
        last = self.last_seq
        if since == last:
            return []
        recent = self._recent
        if recent and recent[0][0] <= since + 1:
            start = since + 1 - recent[0][0]
            return [recent[i][1] for i in range(start, len(recent))]
        rows = await db_log_after(self.room_id, since, last)
        meter.rows_read(self.slug, len(rows))
        if len(rows) != last - since:
            return None  # retention removed part of it: the client gets the snapshot
        return [_frame_of(row) for row in rows]

    async def _on_leave(self, leave: Leave) -> None:
        peer = leave.peer
        gone = await self.runtime.presence.leave(self.slug, peer.id, peer.user_id)
        self.roster.leave(peer.user_id, peer.id)
        meter.left(self.slug, peer.id)
        effect = gone[1] if gone is not None else None
        if effect == "left":
            signals.user_left.send(None, room=self.slug, user_id=peer.user_id)
            if self.roster.empty():
                signals.room_vacated.send(None, room=self.slug)
            await self.presence_out.left(peer.user_id, peer.id, leave.code, leave.reason)
        elif effect == "offline":
            await self.presence_out.offline(peer.user_id, peer.id)
        if _overrides(self.kind, "on_close") and not self.degraded:
            await self.kind.on_close(self.context, peer)

    async def _on_presence_signal(self, frame: Frame) -> None:
        """Internal frames from the socket's process (presence/service.py)."""
        peer = frame.peer
        presence = self.runtime.presence
        if frame.type == OFFLINE_FRAME:
            # Silent past the TTL; others hear of it if no other socket of
            # the user is fresh.
            self.roster.silent(peer.user_id, peer.id)
            if not await presence.is_online(self.slug, peer.user_id):
                await self.presence_out.offline(peer.user_id, peer.id)
        elif frame.type == ONLINE_FRAME and not peer.closed:
            effect = await presence.join(self.slug, peer.id, peer.user_id, getattr(peer, "process", "") or PROCESS_ID)
            self.roster.join(peer.user_id, peer.id)
            if effect is not None:
                status = self.roster.status_of(peer.user_id)
                if effect == "joined":
                    await self.presence_out.joined(peer.user_id, peer.id)
                else:
                    await self.presence_out.online(peer.user_id, peer.id, status)

    def stage_server_event(self, type_: str, payload: Any, user_id: str) -> int:
        """A durable event from the server side (a hook, an alarm, a timer)."""
        mtype = self.kind.message_type(type_)
        if mtype is None or not mtype.durable:
            raise ValueError(f"publish: {type_!r} is not a durable type of kind {self.kind.name!r}")
        mtype.schema.validate(payload)
        payload_bytes = b"" if payload is None else orjson.dumps(payload)
        message = Incoming(type_, user_id, payload)
        self.kind.check(self.state, message)
        payload_json = payload_bytes.decode()
        ts = now_ms()
        seq = self._next_seq
        self._next_seq = seq + 1
        self.state = self.kind.fold(self.state, DurableEvent(seq, type_, user_id, payload, ts))
        text = event_frame(type_, seq, user_id, payload_json, ts)
        row = (self.room_id, seq, type_, user_id, "", payload_json, ts)
        self._staged.append(Staged(seq, SERVER_PEER, None, text, row, message, time.perf_counter()))
        return seq

    async def _on_alarm(self, due: AlarmDue) -> None:
        if not await db_alarm_is_current(due.alarm_id, due.token, due.attempts):
            # Delivered twice (a claim ran out), or re-set/deleted meanwhile.
            log.info("alarm skipped room=%s name=%s reason=stale", self.slug, due.name)
            return
        delay_ms = now_ms() - due.due_ms
        saved = self.alarms.snapshot()
        entry = self.alarms.entries.get(due.name)
        if entry is not None and entry.token == due.token:
            del self.alarms.entries[due.name]  # get_alarm() is None while it runs
        self.alarm_retry_count = due.attempts
        try:
            await self.kind.on_alarm(self.context, due.name)
        except Exception as exc:
            await self._alarm_failed(due, saved, exc)
            return
        finally:
            self.alarm_retry_count = 0
        self.alarms.delivered(due.name, due.token)
        meter.alarm_fired(self.slug)
        await self._flush()  # the handler's writes and the row's deletion, one transaction
        log.info(
            "alarm ran room=%s name=%s attempt=%d delay_ms=%d", self.slug, due.name, due.attempts + 1, delay_ms
        )

    async def _alarm_failed(self, due: AlarmDue, saved: Any, exc: Exception) -> None:
        # Nothing the failed handler staged is kept: storage writes, alarm
        # changes and durable events (already folded: rebuild the state).
        self.alarms.restore(saved)
        self.storage.forget()
        if self._staged:
            self._staged = []
            await self._reload_state()
        error = f"{type(exc).__name__}: {exc}"
        failures, next_at = await db_record_alarm_failure(due.alarm_id, due.token, due.attempts, error, timezone.now())
        if next_at is not None:
            self.runtime.alarms_changed()
        log.warning(
            "alarm failed room=%s name=%s attempt=%d error=%s next=%s",
            self.slug,
            due.name,
            failures,
            type(exc).__name__,
            "failed" if next_at is None else f"{int((next_at.timestamp() * 1000) - now_ms())}ms",
        )

    async def _on_tick(self, tick: Tick) -> None:
        timer = tick.timer
        if not self.timers.due(timer):
            return
        try:
            await run_timer(timer, self.context)
        except Exception as exc:
            # The type only: a message may quote room data (logs never carry payloads).
            log.warning("timer failed room=%s error=%s", self.slug, type(exc).__name__)

    async def _on_call(self, call: Call) -> None:
        try:
            result = await call.fn(self.context)
        except Exception as exc:
            if not call.future.done():
                call.future.set_exception(exc)
            return
        await self._flush()
        if not call.future.done():
            call.future.set_result(result)


def _frame_of(row: LogRow) -> str:
    seq, type_, user_id, _client_id, payload, ts = row
    return event_frame(type_, seq, user_id, payload, ts)


# Redis (leases, presence, the room bus) or a peer that cannot be reached:
# an outage the runtime rides out (clients are refused or reset and retry),
# logged as a WARNING without a traceback, like an unreachable database.
_NETWORK_ERRORS = (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError)


def _unreachable(exc: BaseException) -> bool:
    return is_unavailable(exc) or isinstance(exc, _NETWORK_ERRORS)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
