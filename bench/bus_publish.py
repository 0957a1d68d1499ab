"""CPU per batch published on the room bus (Redis PUBLISH), on the owner's side.

    .venv/bin/python bench/bus_publish.py                    # 3,000 batches of 1 and of 3, 3 rounds
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bus_publish.py --batches 5000 --rounds 5

In the distributed mode the owner of a room publishes each commit's events
(and the replies to other processes' sockets) as one batch; with a commit
per message or two, that is a batch per message or two. Each round publishes
``--batches`` batches of N ``draw`` events shaped as the runtime's
(``encode_event``), one after another as the bus's writer does, through:

- ``publisher``: the bus's own ``PublisherConnection`` (the packed commands
  in one write, the replies parsed by hiredis);
- ``redis-py-pipeline``: what the bus did before, a redis-py pipeline per
  batch (``transaction=False``), with hiredis' parser.

and prints the CPU time of this process (``time.process_time``) and the wall
time per batch, alternating the two each round, medians over the rounds.
Nothing subscribes to the channel: what is measured is the publishing side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from _inprocess import setup_django

URL = os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
setup_django("bus-publish")

import redis.asyncio as aioredis  # noqa: E402

from rooms.runtime.cluster import BUS_PREFIX, encode_event  # noqa: E402
from rooms.runtime.redis_pubsub import PublisherConnection  # noqa: E402

Publish = Callable[[list[tuple[str, bytes]]], Awaitable[None]]


async def measure(publish: Publish, size: int, batches: int) -> tuple[float, float]:
    channel = f"{BUS_PREFIX}bench-publish"
    batch = [(channel, encode_event("dorm.inbox.bench!x", '{"type":"draw","seq":%d,"x":1,"y":2}' % i, i, None)) for i in range(size)]
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(batches):
        await publish(batch)
    return (time.process_time() - cpu) / batches * 1e6, (time.perf_counter() - wall) / batches * 1e6


async def main(batches: int, rounds: int, sizes: list[int]) -> None:
    ours = PublisherConnection(URL)
    client = aioredis.Redis.from_url(URL, socket_timeout=5)

    async def publisher(batch: list[tuple[str, bytes]]) -> None:
        await ours.publish(batch, 5.0)

    async def pipeline(batch: list[tuple[str, bytes]]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for channel, data in batch:
                pipe.publish(channel, data)
            await pipe.execute()

    ways: dict[str, Publish] = {"publisher": publisher, "redis-py-pipeline": pipeline}
    for way in ways.values():
        await way([(f"{BUS_PREFIX}bench-publish", b"warm")])
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(rounds):
        order = list(ways.items()) if r % 2 == 0 else list(reversed(ways.items()))
        for size in sizes:
            for name, way in order:
                results.setdefault((name, size), []).append(await measure(way, size, batches))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    print(f"Redis {URL}, {batches} batches x {rounds} rounds; per batch, medians (CPU of this process / wall):")
    for (name, size), values in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"  {size} event(s)  {name:18} {cpu:6.1f} us CPU  {wall:6.1f} us wall")
    await ours.aclose()
    await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,3", help="events per batch, comma-separated")
    args = parser.parse_args()
    asyncio.run(main(args.batches, args.rounds, [int(s) for s in args.sizes.split(",")]))
