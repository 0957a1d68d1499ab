"""The distributed mode: N processes on Redis, one writer per room.

Three Redis mechanisms, each with one job (ARCHITECTURE.md, "Data flow"):

- **Leases** (``dorm:lease:<room>``, value = the owner's inbox channel, TTL
  renewed every third of it): who runs a room's actor. A process claims a
  room only after the previous local actor of that room has finished, and an
  actor whose renewal fails is stopped at once. The unique ``(room, seq)``
  constraint is the last fence if two writers ever overlap.
- **Inboxes** (a channels-redis channel per process): frames, joins and leaves
  from sockets on other processes, forwarded in order by one forwarder task.
- **Room bus** (Redis pub/sub ``dorm:room:<room>``): everything the owner
  sends to sockets it does not hold: events (one publish per event per room,
  however many sockets), welcomes and replies for remote connections, and
  ``released`` when the owner lets the room go cleanly. Each process
  subscribed to a room writes events to its own sockets through its hub.

Any doubt about what a process's sockets have seen (a seq gap on the bus, an
owner that vanished without ``released``, a lost lease) closes those sockets
with 1001: the client resumes with ``since`` and retries unacknowledged ids,
which the new owner de-duplicates from the log. Correct first, then fast.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from channels.layers import get_channel_layer
from django.conf import settings

from presence.process import PROCESS_ID
from rooms.conf import dorm_settings
from rooms.protocol import CloseCode, ErrorReason
from rooms.runtime.channel_layer import DormRedisChannelLayer, InboxReceiver, InboxSender
from rooms.runtime.connection import SCOPE_RANK, Connection, ConnectionState
from rooms.runtime.messages import AlarmDue, Binary, Call, Frame, Item, Join, Leave, Peer, Tick
from rooms.runtime.redis_pubsub import PublisherConnection, SubscriberConnection

if TYPE_CHECKING:
    from rooms.runtime.registry import ActorRegistry, Runtime

log = logging.getLogger("dorm.cluster")

LEASE_PREFIX = "dorm:lease:"
BUS_PREFIX = "dorm:room:"

# Claim: take a free lease, or tell who holds it.
CLAIM = """
local current = redis.call('get', KEYS[1])
if not current then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return current
"""
# Renew or release only a lease this process still holds.
RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

# Redis or a peer is unreachable for now: the clients retry, nothing is wrong
# with the code.
UNAVAILABLE = (ConnectionError, TimeoutError, RedisError)

GOING_AWAY = "room moved or server restarting, reconnect with since"
# Most forwarded items in one channel-layer message (one send, one receive).
FORWARD_BATCH_ITEMS = 256
# A bus publish or an inbox send unanswered this long fails (as the redis-py
# pool's socket timeout fails its commands): the rooms it carried restart.
REDIS_TIMEOUT_SECONDS = 5.0


def lease_key(room: str) -> str:
    return LEASE_PREFIX + room


def bus_channel(room: str) -> str:
    return BUS_PREFIX + room


class RemotePeer:
    """A socket of another process, as the owning actor sees it.

    Whatever the actor sends it goes over the room bus, in the same ordered
    stream as the room's events, so a remote client sees its welcome, replay,
    events and acks in exactly the order the actor produced them.
    """

    __slots__ = ("id", "room", "user_id", "scope", "refused", "process", "_closed", "_cluster")

    def __init__(self, cluster: Cluster, room: str, conn_id: str, user_id: str, scope: str, process: str = "") -> None:
        self.id = conn_id
        # The process holding the socket (presence entries record it).
        self.process = process
        self.room = room
        self.user_id = user_id
        self.scope = scope
        self.refused = False
        self._closed = False
        self._cluster = cluster

    @property
    def closed(self) -> bool:
        return self._closed

    def may_send(self, required_scope: str) -> bool:
        return SCOPE_RANK.get(self.scope, -1) >= SCOPE_RANK.get(required_scope, 99)

    async def open(self, welcome: str, seq: int, replay: list[str]) -> None:
        self._cluster.bus.publish(self.room, {"k": "open", "c": self.id, "w": welcome, "s": seq, "r": replay})

    async def reply(self, text: str) -> None:
        self._cluster.bus.publish(self.room, {"k": "reply", "c": self.id, "t": text})

    async def send_bytes(self, data: bytes) -> None:
        # Base64 in the bus's JSON, in the room's one ordered stream.
        self._cluster.bus.publish(self.room, {"k": "bin", "c": self.id, "b": base64.b64encode(data).decode()})

    async def error(
        self, reason: str, client_id: str | None = None, detail: str | None = None, code: str | None = None
    ) -> None:
        self._cluster.bus.publish(self.room, {"k": "error", "c": self.id, "r": reason, "i": client_id, "d": detail, "e": code})

    async def close(self, code: int, reason: str) -> None:
        self._closed = True
        self._cluster.bus.publish(self.room, {"k": "close", "c": self.id, "code": int(code), "reason": reason})


# Events, the bulk of the bus, travel as a one-line header and the event's
# own JSON text: "E <origin> <seq or -> <excluded connection or ->\n<text>".
# A JSON envelope around the text cost an escape on publish, an unescape and
# a dict on every receiving process, per event. Other bus messages (welcomes,
# replies, closes, released) are JSON objects, so they start with "{".
EVENT_MARK = b"E"
_NONE = b"-"


def encode_event(origin: str, text: str, seq: int | None, exclude: str | None) -> bytes:
    head = b"E %s %s %s\n" % (
        origin.encode(),
        _NONE if seq is None else str(seq).encode(),
        _NONE if exclude is None else exclude.encode(),
    )
    return head + text.encode()


def decode_event(data: bytes) -> tuple[str, int | None, str | None, str]:
    """(origin, seq, exclude, text) of an encoded event."""
    end = data.index(b"\n")
    _, origin, seq, exclude = data[:end].split(b" ")
    return (
        origin.decode(),
        None if seq == _NONE else int(seq),
        None if exclude == _NONE else exclude.decode(),
        data[end + 1 :].decode(),
    )


def encode_item(room: str, item: Item) -> dict[str, Any] | None:
    """A channel-layer message for an item (None: it cannot leave the process)."""
    if isinstance(item, (Call, Tick)):
        return None
    if isinstance(item, AlarmDue):
        # The row is the truth: the owner re-checks token and attempts before running it.
        return {
            "type": "dorm.item", "room": room, "k": "alarm", "a": item.alarm_id, "n": item.name,
            "tk": item.token, "at": item.attempts, "due": item.due_ms,
        }
    peer = item.peer
    # "h": the process holding the socket (presence records it). It used to
    # travel as "p" alone, which a frame's payload overwrites; "p" stays for
    # a process of an older release during a rolling deploy.
    base = {"type": "dorm.item", "room": room, "c": peer.id, "u": peer.user_id, "sc": peer.scope, "h": PROCESS_ID,
            "p": PROCESS_ID}
    if isinstance(item, Join):
        return {**base, "k": "join", "since": item.since}
    if isinstance(item, Binary):
        return {**base, "k": "bin", "b": base64.b64encode(item.data).decode()}
    if isinstance(item, Frame):
        # The payload travels as JSON text: msgpack and JSON disagree on edges.
        payload = None if item.payload is None else orjson.dumps(item.payload).decode()
        return {**base, "k": "frame", "t": item.type, "i": item.client_id, "p": payload}
    return {**base, "k": "leave", "code": item.code, "reason": item.reason}


def _holder(message: dict[str, Any]) -> str:
    """The process holding a forwarded item's socket ("" if not given)."""
    holder = message.get("h")
    if holder is None and message.get("k") != "frame":
        holder = message.get("p")  # a process of an older release (a frame's "p" is its payload)
    return holder if isinstance(holder, str) else ""


@dataclass
class Route:
    """How this process reaches a room it does not run: queue, then owner."""

    room: str
    owner: str | None = None
    queue: deque[Item] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class RoomBus:
    """Publishing to and subscribing to room channels: a connection of its own
    for each (rooms/runtime/redis_pubsub.py)."""

    def __init__(self, cluster: Cluster, client: aioredis.Redis) -> None:
        self.cluster = cluster
        self.client = client
        self.subscriber = self.new_subscriber()
        self.publisher = PublisherConnection(settings.REDIS_URL)
        # One (un)subscribe at a time: the subscriber connection opens on
        # first use, and concurrent first subscribes (a hundred rooms joining
        # at once) must not each open one (with redis-py's PubSub, all but
        # the last subscription were never confirmed).
        self._command_lock = asyncio.Lock()
        self.subscribed: set[str] = set()
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_ready = asyncio.Event()
        self._flushed: list[asyncio.Future[None]] = []
        self.reader: asyncio.Task[None] | None = None
        self.writer: asyncio.Task[None] | None = None

    @staticmethod
    def new_subscriber() -> SubscriberConnection:
        return SubscriberConnection(settings.REDIS_URL)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.writer = loop.create_task(self._write_loop(), name="dorm-bus-writer")

    # -- publishing: one FIFO, so a room's messages keep the actor's order ----

    def publish(self, room: str, message: dict[str, Any]) -> None:
        message["o"] = self.cluster.me
        self._outbox.append((bus_channel(room), orjson.dumps(message)))
        self._outbox_ready.set()

    def publish_event(self, room: str, text: str, seq: int | None, exclude: str | None) -> None:
        self._outbox.append((bus_channel(room), encode_event(self.cluster.me, text, seq, exclude)))
        self._outbox_ready.set()

    async def flushed(self) -> None:
        """Wait until everything published so far has reached Redis."""
        if not self._outbox and not self._flushed and not self._outbox_ready.is_set():
            return
        future = asyncio.get_running_loop().create_future()
        self._flushed.append(future)
        self._outbox_ready.set()
        await future

    async def _write_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            waiters, self._flushed = self._flushed, []
            batch = list(self._outbox)
            self._outbox.clear()
            if batch:
                try:
                    await self.publisher.publish(batch, REDIS_TIMEOUT_SECONDS)
                except Exception as exc:
                    self.cluster.redis_failed()
                    rooms = {channel[len(BUS_PREFIX) :] for channel, _ in batch}
                    log.warning("bus publish failed rooms=%d messages=%d error=%s", len(rooms), len(batch), type(exc).__name__)
                    # Remote sockets may have missed events: restart those rooms.
                    for room in rooms:
                        self.cluster.room_failed(room, "bus publish failed")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- subscribing ------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        """Subscribe to the room's channel; returns once Redis has confirmed it."""
        if room in self.subscribed:
            return
        future = self._confirm.get(room)
        if future is None:
            future = self._confirm[room] = asyncio.get_running_loop().create_future()
            try:
                async with self._command_lock:
                    await self.subscriber.subscribe(bus_channel(room))
            except Exception:
                self._confirm.pop(room, None)
                raise
            if self.reader is None or self.reader.done():
                self.reader = asyncio.get_running_loop().create_task(self._read_loop(), name="dorm-bus-reader")
        await asyncio.wait_for(asyncio.shield(future), 5.0)

    async def unsubscribe(self, room: str) -> None:
        if room in self.subscribed:
            self.subscribed.discard(room)
            async with self._command_lock:
                await self.subscriber.unsubscribe(bus_channel(room))

    async def _read_loop(self) -> None:
        while True:
            if not self.subscribed and not self._confirm:
                # Nothing to read: subscribe() starts a new reader.
                self.reader = None
                return
            try:
                # Every reply that has arrived, in order: one wake-up for a
                # burst of events, no per-message awaits.
                replies = await self.subscriber.read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bus connection lost error=%s", type(exc).__name__)
                await self._reconnect()
                continue
            for reply in replies:
                kind = reply[0]
                if kind == b"message":
                    room, data = reply[1][len(BUS_PREFIX) :].decode(), reply[2]
                    try:
                        if data[:1] == EVENT_MARK:
                            self.cluster.on_bus_event(room, *decode_event(data))
                        else:
                            self.cluster.on_bus_message(room, orjson.loads(data))
                    except Exception:
                        log.exception("bus message failed room=%s", room)
                elif kind == b"subscribe":
                    room = reply[1][len(BUS_PREFIX) :].decode()
                    self.subscribed.add(room)
                    future = self._confirm.pop(room, None)
                    if future is not None and not future.done():
                        future.set_result(None)

    async def _reconnect(self) -> None:
        """A new pub/sub connection; whatever was in flight may be lost."""
        self.cluster.redis_failed()
        rooms = set(self.subscribed) | set(self._confirm)
        self.subscribed.clear()
        for future in self._confirm.values():
            if not future.done():
                future.set_exception(ConnectionError("bus connection lost"))
        self._confirm.clear()
        try:
            await self.subscriber.aclose()
        except Exception:
            pass
        self.subscriber = self.new_subscriber()
        # Sockets of rooms run elsewhere may have missed events.
        self.cluster.bus_gap(rooms)
        delay = 0.1
        while True:
            try:
                await self.client.ping()
                break
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        for room in rooms:
            if not self.cluster.runtime.hub.count(room):
                continue
            # A subscribe() made while Redis came back waits on its own
            # future: keep it (a new one here would take its confirmation,
            # and the route waiting on it would time out after 5 s and
            # refuse its sockets with 1013).
            future = self._confirm.get(room)
            if future is None:
                future = self._confirm[room] = asyncio.get_running_loop().create_future()
                future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
            try:
                async with self._command_lock:
                    await self.subscriber.subscribe(bus_channel(room))
            except Exception:
                # Redis went away again: the read loop's next failure retries.
                break

    async def stop(self) -> None:
        for task in (self.reader, self.writer):
            if task is not None:
                task.cancel()
        for task in (self.reader, self.writer):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        for connection in (self.subscriber, self.publisher):
            try:
                await connection.aclose()
            except Exception:
                pass


class Cluster:
    """This process's part of the cluster: its inbox, leases, routes and bus."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.me = ""  # this process's inbox channel, also its lease value
        self.ttl_ms = int(dorm_settings.LEASE_TTL_SECONDS * 1000)
        # A blocking pool: a burst of claims (hundreds of rooms waking at
        # once) waits for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=64, timeout=5, socket_timeout=5, socket_connect_timeout=5
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.bus = RoomBus(self, self.redis)
        self.layer = get_channel_layer()
        # The forward loop's sends: on connections of their own (channel_layer.InboxSender).
        self.inbox_sender = InboxSender(self.layer, REDIS_TIMEOUT_SECONDS) if isinstance(self.layer, DormRedisChannelLayer) else None
        # The inbox loop's receives, likewise (InboxReceiver), once the inbox has its name.
        self.inbox_receiver: InboxReceiver | None = None
        self.held: set[str] = set()  # rooms whose lease this process holds
        self.routes: dict[str, Route] = {}
        self.remote_peers: dict[str, RemotePeer] = {}
        # Server-side peers (REST publish) waiting for replies over the bus.
        self.local_peers: dict[str, Peer] = {}
        # Per room: the process whose messages the bus last carried, whether
        # it let the room go cleanly, and the last durable seq seen.
        self.bus_origin: dict[str, str] = {}
        self.bus_seq: dict[str, int] = {}
        # Rooms with bus work still running as tasks, and how many (_in_order).
        self._bus_tasks: dict[str, int] = {}
        self._forward_queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._forward_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._renewed_at = time.monotonic()
        # Bumped whenever a Redis connection failed: Redis may have restarted
        # empty (every lease gone), so the last renewal proves nothing until
        # a renewal that started after the failure succeeds.
        self._redis_failures = 0
        self._doubt_cleared = 0
        self._claim = self.redis.register_script(CLAIM)
        self._renew = self.redis.register_script(RENEW)
        self._release = self.redis.register_script(RELEASE)
        self.started: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self.me = await self.layer.new_channel("dorm.inbox.")
        if isinstance(self.layer, DormRedisChannelLayer):
            self.inbox_receiver = InboxReceiver(self.layer, self.me, REDIS_TIMEOUT_SECONDS)
        loop = asyncio.get_running_loop()
        self.bus.start()
        for coro, name in (
            (self._inbox_loop(), "dorm-inbox"),
            (self._forward_loop(), "dorm-forwarder"),
            (self._lease_loop(), "dorm-leases"),
        ):
            self._tasks.append(loop.create_task(coro, name=name))
        log.info("cluster member up inbox=%s ttl_ms=%d", self.me, self.ttl_ms)

    async def ready(self) -> None:
        if self.started is None:
            self.started = asyncio.ensure_future(self.start())
        await asyncio.shield(self.started)

    # -- leases -------------------------------------------------------------------

    async def claim(self, room: str) -> str:
        """Take the room's lease if it is free; the owner's inbox either way."""
        await self.ready()
        owner = await self._claim(keys=[lease_key(room)], args=[self.me, self.ttl_ms])
        owner = owner.decode() if isinstance(owner, bytes) else str(owner)
        if owner == self.me:
            self.held.add(room)
        return owner

    async def confirm_lease(self, room: str) -> None:
        """Before a commit: prove the lease is still this process's.

        Renewals run every TTL/3 on the event loop; a starved loop can let a
        lease lapse unnoticed while another process takes the room. A commit
        after a recent renewal goes ahead; otherwise this room's lease is
        renewed first (compare-and-expire), so two actors of one room never
        both commit for long. The unique (room, seq) stays the last fence.

        After any failed Redis connection no renewal counts until the next
        full one: a Redis restarted empty has no leases, another process may
        have claimed the room at once, and the next commit here would race it.
        """
        if room not in self.held:
            raise LeaseLost(room)
        if self._doubt_cleared == self._redis_failures and time.monotonic() - self._renewed_at < self.ttl_ms / 2000:
            return
        if not await self._renew(keys=[lease_key(room)], args=[self.me, self.ttl_ms]):
            raise LeaseLost(room)

    async def release(self, room: str) -> None:
        self.held.discard(room)
        await self._release(keys=[lease_key(room)], args=[self.me])

    async def _lease_loop(self) -> None:
        interval = self.ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            await self._renew_all()
            await self._watch_owners()

    def redis_failed(self) -> None:
        """A Redis connection failed: hold every lease in doubt (see confirm_lease)."""
        self._redis_failures += 1

    async def _renew_all(self) -> None:
        rooms = list(self.held)
        failures = self._redis_failures
        if not rooms:
            self._renewed_at = time.monotonic()
            self._doubt_cleared = failures
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:  # reset even when execute fails
                for room in rooms:
                    # The async Script call is a coroutine even on a pipeline (it
                    # queues the EVALSHA there): without the await nothing is
                    # queued, and every lease would expire one TTL after its claim.
                    await self._renew(keys=[lease_key(room)], args=[self.me, self.ttl_ms], client=pipe)
                results = await pipe.execute()
        except Exception as exc:
            self.redis_failed()
            # Another process may take the rooms once the TTL runs out: stop
            # their actors before that, whatever Redis says later.
            if time.monotonic() - self._renewed_at > self.ttl_ms / 1000 * 0.6:
                log.warning("lease renewal failing, giving up rooms=%d error=%s", len(rooms), type(exc).__name__)
                for room in rooms:
                    self.room_failed(room, "lease renewal failed")
            return
        self._renewed_at = time.monotonic()
        self._doubt_cleared = failures
        for room, ok in zip(rooms, results):
            if not ok and room in self.held:
                self.room_failed(room, "lease lost")

    async def _watch_owners(self) -> None:
        """Close local sockets of rooms whose owner vanished without a word."""
        watched = [r for r in self.runtime.hub.rooms() if r not in self.held and r in self.bus_origin]
        if not watched:
            return
        try:
            owners = await self.redis.mget([lease_key(r) for r in watched])
        except Exception:
            return  # the bus reader notices a dead Redis
        for room, owner in zip(watched, owners):
            owner = owner.decode() if isinstance(owner, bytes) else owner
            origin = self.bus_origin.get(room)
            if origin and owner != origin:
                log.warning("room owner gone room=%s", room)
                self.bus_origin.pop(room, None)
                self._forget_route(room)
                self.close_local(room)

    def room_failed(self, room: str, why: str) -> None:
        """Stop the room's actor at once (no snapshot) and reset its sockets."""
        self.held.discard(room)
        actor = self.runtime.registry.actors.get(room)
        if actor is not None:
            log.warning("stopping room room=%s reason=%s", room, why)
            actor.abort()
        self._forget_route(room)
        self.close_local(room)

    def close_local(self, room: str, *, keep_waiting: bool = False) -> None:
        """Close this process's sockets of the room with 1001 (resume with
        since); with ``keep_waiting``, not those still waiting for a welcome."""
        self.bus_seq.pop(room, None)
        for conn in self.runtime.hub.connections(room):
            if not (keep_waiting and conn.state is ConnectionState.PENDING):
                conn.close_soon(CloseCode.GOING_AWAY, GOING_AWAY)

    # -- routing -----------------------------------------------------------------

    def route(self, registry: ActorRegistry, room: str, item: Item) -> None:
        """Send an item for a room without a local actor to wherever it runs."""
        route = self.routes.get(room)
        if route is None:
            route = self.routes[room] = Route(room)
        if route.owner is not None and not route.queue and self._may_forward(room, item):
            self._forward(route.owner, room, item)
            return
        route.queue.append(item)
        if route.task is None:
            route.task = asyncio.get_running_loop().create_task(self._resolve(registry, route), name=f"route:{room}")

    def _may_forward(self, room: str, item: Item) -> bool:
        # A local peer's item waits for the bus subscription that carries
        # the owner's answers back.
        return not _is_local(item) or room in self.bus.subscribed

    async def _resolve(self, registry: ActorRegistry, route: Route) -> None:
        room = route.room
        try:
            while route.queue:
                previous = registry.previous_task(room)
                if previous is not None:
                    await asyncio.wait([previous])
                if any(_is_local(item) for item in route.queue):
                    await self.bus.subscribe(room)
                if self.runtime.shutting_down:
                    owner = await self._current_owner(room)
                    if owner is None or owner == self.me:
                        raise ConnectionError("server shutting down")
                else:
                    owner = await self.claim(room)
                if owner == self.me:
                    if self.routes.get(room) is route:
                        del self.routes[room]
                    actor = registry.wake(room)
                    while route.queue:
                        actor.submit(route.queue.popleft())
                    return
                route.owner = owner
                while route.queue:
                    self._forward(owner, room, route.queue.popleft())
        except Exception as exc:
            if isinstance(exc, UNAVAILABLE):
                log.warning("routing failed room=%s error=%s", room, type(exc).__name__)
            else:
                log.exception("routing failed room=%s", room)
            if self.routes.get(room) is route:
                del self.routes[room]
            items, route.queue = list(route.queue), deque()
            await refuse(items)
        finally:
            route.task = None

    async def _current_owner(self, room: str) -> str | None:
        owner = await self.redis.get(lease_key(room))
        return owner.decode() if isinstance(owner, bytes) else owner

    def _forget_route(self, room: str) -> None:
        route = self.routes.get(room)
        if route is not None and route.task is None:
            del self.routes[room]

    def _forward(self, owner: str, room: str, item: Item) -> None:
        message = encode_item(room, item)
        if message is None:
            call = item
            assert isinstance(call, Call)
            if not call.future.done():
                call.future.set_exception(RemoteRoom(room, owner))
            return
        peer = getattr(item, "peer", None)  # alarms have none
        if peer is not None and not isinstance(peer, (RemotePeer, Connection)):
            self.local_peers[peer.id] = peer
        self._forward_queue.append((owner, message))
        self._forward_ready.set()

    async def _forward_loop(self) -> None:
        # One task: channels-redis orders a channel by send time, so concurrent
        # sends could swap a socket's frames. Each send carries every item
        # queued for that owner so far (up to FORWARD_BATCH_ITEMS), in order:
        # a channel-layer send costs several Redis round trips, and one send
        # per frame held a room's forwarded frames to a few hundred per second
        # with seconds of queueing (docs/performance.md, "cluster").
        while True:
            await self._forward_ready.wait()
            self._forward_ready.clear()
            queue = self._forward_queue
            while queue:
                owner = queue[0][0]
                batch: list[dict[str, Any]] = []
                while queue and queue[0][0] == owner and len(batch) < FORWARD_BATCH_ITEMS:
                    batch.append(queue.popleft()[1])
                try:
                    message = {"type": "dorm.items", "items": batch}
                    if self.inbox_sender is not None:
                        await self.inbox_sender.send(owner, message)
                    else:
                        await self.layer.send(owner, message)
                except Exception as exc:
                    self.redis_failed()
                    rooms = {message["room"] for message in batch}
                    log.warning("forward failed rooms=%d items=%d error=%s", len(rooms), len(batch), type(exc).__name__)
                    # The owner never got them: the sockets start over.
                    for room in rooms:
                        self._forget_route(room)
                        self.close_local(room)

    async def _inbox_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                if self.inbox_receiver is not None:
                    messages = await self.inbox_receiver.receive()
                else:
                    messages = [await self.layer.receive(self.me)]
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                continue  # an idle inbox: the blocking pop timed out, as it does
            except Exception as exc:
                self.redis_failed()
                log.warning("inbox receive failed error=%s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            for message in messages:
                # "dorm.items": a batch; "dorm.item": one (a process of an
                # older release during a rolling deploy).
                for item in message["items"] if message.get("type") == "dorm.items" else (message,):
                    try:
                        self._on_inbox(item)
                    except Exception:
                        log.exception("inbox message failed room=%s", item.get("room"))

    def _on_inbox(self, message: dict[str, Any]) -> None:
        room = message["room"]
        kind = message["k"]
        if kind == "alarm":
            due = AlarmDue(message["a"], message["n"], message["tk"], message["at"], message["due"])
            self.runtime.registry.submit(room, due)
            return
        conn_id = message["c"]
        # A socket (or a REST publish) of this very process: its item went to
        # the owner this process knew, which had handed the room over to this
        # process by the time it arrived, and routed it back here. The actor
        # must answer the local peer: a RemotePeer's answers go out on the
        # bus, which a process never reads back (a socket would miss its ack
        # and have a hole at its own event's seq; a publish would time out).
        peer: Any = (
            self.runtime.hub.get(room, conn_id) or self.local_peers.pop(conn_id, None) or self.remote_peers.get(conn_id)
        )
        if peer is None:
            peer = RemotePeer(self, room, conn_id, message["u"], message["sc"], _holder(message))
            if kind != "leave":
                self.remote_peers[conn_id] = peer
        item: Item
        if kind == "join":
            item = Join(peer, message["since"])
        elif kind == "bin":
            item = Binary(peer, base64.b64decode(message["b"]))
        elif kind == "frame":
            payload = None if message["p"] is None else orjson.loads(message["p"])
            # Timed from the arrival here (the forwarding hop is not included).
            item = Frame(peer, message["t"], message["i"], payload, time.perf_counter())
        else:
            self.remote_peers.pop(conn_id, None)
            item = Leave(peer, message["code"], message["reason"])
        self.runtime.registry.submit(room, item)

    # -- the bus, receiving side -----------------------------------------------------

    def on_bus_message(self, room: str, message: dict[str, Any]) -> None:
        origin = message.get("o")
        if origin == self.me:
            return  # the owner wrote to its own sockets directly
        kind = message["k"]
        if kind == "released":
            self.bus_origin.pop(room, None)
            route = self.routes.get(room)
            if route is not None and route.owner == origin:
                route.owner = None
            return
        self.bus_origin[room] = origin  # type: ignore[assignment]
        hub = self.runtime.hub
        if kind == "ev":  # the JSON form (a process of an older release)
            self.on_bus_event(room, origin, message["s"], message["x"], message["t"])  # type: ignore[arg-type]
            return
        if kind == "evb":  # a binary broadcast (binary kinds)
            if room in self.held:
                return  # another writer's: never to this actor's sockets (_foreign_event)
            self._in_order(room, hub.deliver_bytes(room, base64.b64decode(message["b"]), message["x"]))
            return
        conn_id = message["c"]
        target: Any = hub.get(room, conn_id)
        if target is None:
            # A server-side peer (REST publish) waits for exactly one answer.
            target = self.local_peers.pop(conn_id, None)
            if target is None:
                return
        if kind == "open":
            seq = message["s"]
            if self.bus_seq.get(room, -1) < seq:
                self.bus_seq[room] = seq
            self._in_order(room, target.open(message["w"], seq, message["r"]))
        elif kind == "reply":
            self._in_order(room, target.reply(message["t"]))
        elif kind == "bin":
            self._in_order(room, target.send_bytes(base64.b64decode(message["b"])))
        elif kind == "error":
            self._in_order(room, target.error(message["r"], message["i"], message["d"], message.get("e")))
        elif kind == "close":
            target.refused = True
            self._in_order(room, target.close(message["code"], message["reason"]))

    def _in_order(self, room: str, coro: Any) -> None:
        """Run a bus message's async work as a task, keeping the room's bus order.

        Tasks start in creation order, and each writes before it first
        yields. While any is pending for the room, events go through tasks
        too (``on_bus_event``), so an ack never falls behind a later event.
        """
        pending = self._bus_tasks
        pending[room] = pending.get(room, 0) + 1

        def done(_: asyncio.Future[Any]) -> None:
            left = pending.get(room, 1) - 1
            if left:
                pending[room] = left
            else:
                pending.pop(room, None)

        asyncio.ensure_future(coro).add_done_callback(done)

    def on_bus_event(self, room: str, origin: str, seq: int | None, exclude: str | None, text: str) -> None:
        """An event of a room run elsewhere: write it to this process's sockets now."""
        if origin == self.me:
            return  # the owner wrote to its own sockets directly
        if room in self.held:
            self._foreign_event(room, seq)
            return
        self.bus_origin[room] = origin
        if seq is not None:
            last = self.bus_seq.get(room)
            if last is not None and seq <= last:
                return  # already delivered
            if last is not None and seq != last + 1:
                log.warning("bus gap room=%s last=%d got=%d", room, last, seq)
                self.close_local(room)
                return
            self.bus_seq[room] = seq
        hub = self.runtime.hub
        if room in self._bus_tasks:
            # A welcome, ack or close of this room is still being written.
            self._in_order(room, hub.deliver(room, text, seq, exclude))
            return
        # The common case: direct writes here, in bus order, with no task per
        # event; only sockets without a direct writer need the ASGI send.
        _, slow = hub.deliver_now(room, text, seq, exclude)
        if slow:
            self._in_order(room, hub.deliver_slow(room, slow, text))

    def _foreign_event(self, room: str, seq: int | None) -> None:
        """Another process's event of a room whose lease this process holds.

        This process's sockets of the room are fed by its own actor alone:
        an event of another writer never reaches them (it would be a second
        stream, with seqs this actor never had). It is either late (the
        previous owner's last events, at or below what this actor loaded)
        or the sign of a second owner: Redis lost the leases (restarted
        empty) and another process claimed the room. Then this process lets
        the room go and its sockets resume wherever the room runs now.
        """
        actor = self.runtime.registry.actors.get(room)
        if seq is None or actor is None or not actor.started or seq <= actor.last_seq:
            return
        log.warning("another owner on the bus room=%s seq=%d local_seq=%d", room, seq, actor.last_seq)
        self.room_failed(room, "another owner on the bus")

    def adopted(self, room: str, seq: int) -> None:
        """A local actor of the room has loaded it at ``seq`` (this process
        now runs a room it may have followed on the bus).

        Its open sockets here were fed by the previous owner's bus stream
        and have seen up to ``bus_seq``; from now on they get this actor's
        events, from ``seq + 1``. If the two differ (the previous owner was
        stopped with a commit in doubt that did reach the database, so
        nobody published it), those sockets would skip events: they are
        closed with 1001 and resume with ``since``. Sockets still waiting
        for their welcome get it from this actor and are left alone.
        """
        seen = self.bus_seq.pop(room, None)
        if seen is None or seen == seq:
            return
        log.warning("sockets not at the loaded seq room=%s seen=%d seq=%d", room, seen, seq)
        self.close_local(room, keep_waiting=True)

    def bus_gap(self, rooms: set[str]) -> None:
        for room in rooms:
            if room not in self.held:
                self.close_local(room)

    # -- the owner's side of fan-out ---------------------------------------------------

    def publish_event(self, room: str, text: str, seq: int | None, exclude: str | None) -> None:
        self.bus.publish_event(room, text, seq, exclude)

    def publish_bytes(self, room: str, data: bytes, exclude: str | None) -> None:
        self.bus.publish(room, {"k": "evb", "x": exclude, "b": base64.b64encode(data).decode()})

    async def actor_stopped(self, room: str, clean: bool) -> None:
        """The local actor is gone: let the room go (cleanly: say so on the bus)."""
        for conn_id in [c for c, p in self.remote_peers.items() if p.room == room]:
            del self.remote_peers[conn_id]
        if room not in self.held:
            return
        if clean:
            self.bus.publish(room, {"k": "released"})
            await self.bus.flushed()
        try:
            await self.release(room)
        except Exception as exc:
            # The TTL frees it; until then other processes see an owner.
            log.warning("lease release failed room=%s error=%s", room, type(exc).__name__)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self.bus.stop()
        for closing in (self.redis, self.inbox_sender, self.inbox_receiver):
            if closing is None:
                continue
            try:
                await closing.aclose()
            except Exception:
                pass


class LeaseLost(Exception):
    """This process no longer holds the room's lease: its actor must stop."""

    def __init__(self, room: str) -> None:
        super().__init__(f"lease of room {room} lost")
        self.room = room


class RemoteRoom(Exception):
    """A call (REST, alarm) for a room another process runs."""

    def __init__(self, room: str, owner: str) -> None:
        super().__init__(f"room {room} runs in another process")
        self.room = room
        self.owner = owner


def _is_local(item: Item) -> bool:
    peer = getattr(item, "peer", None)
    return peer is not None and not isinstance(peer, RemotePeer)


async def refuse(items: list[Item]) -> None:
    """Answer items nobody can run now: the clients retry later."""
    for item in items:
        if isinstance(item, Join):
            item.peer.refused = True
            await item.peer.close(CloseCode.TRY_AGAIN_LATER, "room unavailable, retry later")
        elif isinstance(item, Frame):
            await item.peer.error(ErrorReason.INTERNAL, item.client_id)
        elif isinstance(item, Call) and not item.future.done():
            item.future.set_exception(ConnectionError("room unavailable"))
