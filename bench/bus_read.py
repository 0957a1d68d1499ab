"""CPU per event read from the room bus (Redis pub/sub), on the receiving side.

    .venv/bin/python bench/bus_read.py                      # 100,000 events, 3 rounds, every reader
    .venv/bin/python bench/bus_read.py --events 20000 --rounds 1
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bus_read.py --readers bus

In the distributed mode every process with sockets in a room reads each of
the room's events from the bus once (the owner too, and drops its own), so
this read is paid per event per process on top of the fan-out. A publisher
process sends events shaped like the runtime's (``encode_event`` of a
``draw`` event) in pipelined bursts; the reader counts its own CPU
(``time.process_time``) from the first event to the last and prints
microseconds per event. Readers, alternating each round:

- ``bus``: the runtime's own ``RoomBus`` read loop (``SubscriberConnection``:
  every complete reply per read, hiredis' parser), dispatching to a counter;
- ``pubsub-hiredis`` and ``pubsub-python``: the loop the bus had before,
  redis-py's ``PubSub.get_message`` per message, with hiredis' parser and
  with redis-py's own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from _inprocess import setup_django

# The bus connects to settings.REDIS_URL.
URL = os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
setup_django("bus-read")

import orjson  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser  # noqa: E402

from rooms.runtime.cluster import BUS_PREFIX, EVENT_MARK, RoomBus, decode_event, encode_event  # noqa: E402

READERS = ("bus", "pubsub-hiredis", "pubsub-python")
TEXT = ('{"type":"event","room":"bench","seq":%d,"kind":"draw","user":"u-1","id":"c-%d",'
        '"payload":{"points":[[1,2],[3,4],[5,6]],"color":"#123456","w":2},"ts":1764150000000}')


def publish(channel: str, events: int, burst: int) -> None:
    """The publisher process: ``events`` events in pipelined bursts, then "stop"."""
    client = redis.Redis.from_url(URL)
    sent = 0
    while sent < events:
        pipe = client.pipeline(transaction=False)
        for _ in range(min(burst, events - sent)):
            pipe.publish(channel, encode_event("dorm.inbox.other!x", TEXT % (sent, sent), sent + 1, None))
            sent += 1
        pipe.execute()
        time.sleep(0.001)
    client.publish(channel, orjson.dumps({"k": "stop", "o": "dorm.inbox.other!x"}))


class Counter:
    """Stands in for the cluster: counts the events the reader hands over."""

    me = "dorm.inbox.bench!me"

    def __init__(self) -> None:
        self.events = 0
        self.first_cpu = 0.0
        self.stopped: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def on_bus_event(self, room: str, origin: str, seq: int | None, exclude: str | None, text: str) -> None:
        if not self.events:
            self.first_cpu = time.process_time()
        self.events += 1

    def on_bus_message(self, room: str, message: dict[str, object]) -> None:
        if not self.stopped.done():
            self.stopped.set_result(time.process_time())

    def redis_failed(self) -> None:
        pass

    def bus_gap(self, rooms: set[str]) -> None:
        pass


def start_publisher(channel: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--publish", channel, "--events", str(args.events),
                             "--burst", str(args.burst)])


async def read_with_bus(channel_room: str, args: argparse.Namespace) -> tuple[int, float]:
    counter = Counter()
    client = aioredis.Redis.from_url(URL)
    bus = RoomBus(counter, client)  # type: ignore[arg-type]
    await bus.subscribe(channel_room)
    publisher = start_publisher(BUS_PREFIX + channel_room, args)
    stopped = await counter.stopped
    publisher.wait()
    await bus.stop()
    await client.aclose()
    return counter.events, stopped - counter.first_cpu


async def read_with_pubsub(channel_room: str, args: argparse.Namespace, parser: type) -> tuple[int, float]:
    """The bus's read loop before ``SubscriberConnection`` (rooms/runtime/cluster.py at 35e7183)."""
    counter = Counter()
    client = aioredis.Redis.from_url(URL, parser_class=parser)
    pubsub = client.pubsub()
    await pubsub.subscribe(BUS_PREFIX + channel_room)
    publisher = None
    while not counter.stopped.done():
        message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
        if message is None:
            continue
        kind = message["type"]
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        room = channel[len(BUS_PREFIX):]
        if kind == "message":
            data = message["data"]
            if data[:1] == EVENT_MARK:
                counter.on_bus_event(room, *decode_event(data))
            else:
                counter.on_bus_message(room, orjson.loads(data))
        elif kind == "subscribe" and publisher is None:
            publisher = start_publisher(channel, args)
    assert publisher is not None
    publisher.wait()
    await pubsub.aclose()
    await client.aclose()
    return counter.events, counter.stopped.result() - counter.first_cpu


async def one(reader: str, args: argparse.Namespace) -> float:
    room = f"bus-read-{os.getpid()}-{time.monotonic_ns()}"
    if reader == "bus":
        events, cpu = await read_with_bus(room, args)
    else:
        events, cpu = await read_with_pubsub(room, args, _AsyncHiredisParser if reader == "pubsub-hiredis" else _AsyncRESP2Parser)
    assert events == args.events, (reader, events)
    return cpu / events * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--burst", type=int, default=20, help="events per publisher pipeline (1 ms apart)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--readers", default=",".join(READERS))
    p.add_argument("--publish", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.publish:
        publish(args.publish, args.events, args.burst)
        return
    readers = [r for r in args.readers.split(",") if r]
    unknown = set(readers) - set(READERS)
    if unknown:
        p.error(f"unknown readers {sorted(unknown)}; choose from {', '.join(READERS)}")
    print(f"bus read: {args.events:,} events per round, bursts of {args.burst}, Redis {URL}", flush=True)
    results: dict[str, list[float]] = {r: [] for r in readers}
    for round_ in range(args.rounds):
        for reader in readers:
            us = asyncio.run(one(reader, args))
            results[reader].append(us)
            print(f"round {round_ + 1} {reader:15s} {us:6.2f} us CPU per event", flush=True)
    print("\nreader           us CPU per event (median of rounds)")
    for reader, values in results.items():
        print(f"{reader:15s}  {statistics.median(values):6.2f}   ({' / '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
