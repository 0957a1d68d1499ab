"""Cost of one inbox send and one inbox receive (the forwarder's channel-layer
send to a room's owner, and the owner's receive).

    .venv/bin/python bench/inbox.py                     # 5,000 messages, 3 rounds
    .venv/bin/python bench/inbox.py --messages 1000 --rounds 1

A process whose sockets are in a room run elsewhere forwards their frames to
the owner's inbox, one channel-layer send per batch; the owner's inbox loop
receives them. This times sends of a one-frame batch (the common case at
moderate load) to a process channel on the machine's Redis (``REDIS_URL``,
default database 0, a prefix of its own), one after another as the
forwarder makes them, then receives of the same messages (waiting in the
queue, as under load), with channels-redis' own ``RedisChannelLayer`` (send:
four awaited commands; receive: four), Dorm's ``DormRedisChannelLayer``
(one script each, through redis-py) and, as ``dorm-own``, the cluster's
``InboxSender`` and ``InboxReceiver`` (the same scripts on connections of
their own; the receiver taking one message per round trip, and, as
``dorm-own-many``, every message waiting up to its 64, as it does),
alternating each round. A receive's figures are per message. It prints microseconds of
CPU (this process) and of wall time per send and per receive.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from _inprocess import setup_django

URL = os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
setup_django("inbox-send")

from channels_redis.core import RedisChannelLayer  # noqa: E402

from rooms.runtime.channel_layer import DormRedisChannelLayer, InboxReceiver, InboxSender  # noqa: E402

BATCH = {"type": "dorm.items", "items": [{
    "type": "dorm.item", "room": "bench", "c": "c-1", "u": "u-1", "sc": "write", "p": "proc", "k": "frame",
    "t": "draw", "i": "id-1", "pl": '{"points":[[1,2],[3,4],[5,6]],"color":"#123456","w":2}',
}]}


async def one(layer_class: type[RedisChannelLayer], messages: int, own: int = 0) -> dict[str, tuple[float, float]]:
    """(us CPU, us wall) per send and per receive."""
    layer = layer_class(hosts=[URL], prefix=f"bench-{uuid.uuid4().hex[:8]}", capacity=messages + 10)
    inbox = await layer.new_channel("dorm.inbox.")
    inbox_sender = InboxSender(layer, 5.0) if own else None  # type: ignore[arg-type]
    inbox_receiver = InboxReceiver(layer, inbox, 5.0) if own else None  # type: ignore[arg-type]
    if inbox_receiver is not None:
        inbox_receiver.MAX_MESSAGES = own  # type: ignore[misc]
    send = layer.send if inbox_sender is None else inbox_sender.send

    async def receive() -> list[object]:
        return [await layer.receive(inbox)] if inbox_receiver is None else await inbox_receiver.receive()

    await send(inbox, BATCH)  # connect, load the scripts
    assert await receive() == [BATCH]
    result = {}
    for what in ("send", "receive"):
        c0, w0 = time.process_time(), time.perf_counter()
        done = 0
        while done < messages:
            if what == "send":
                await send(inbox, BATCH)
                done += 1
            else:
                done += len(await receive())
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        result[what] = (cpu / messages * 1e6, wall / messages * 1e6)
    if inbox_sender is not None and inbox_receiver is not None:
        await inbox_sender.aclose()
        await inbox_receiver.aclose()
    await layer.flush()
    await layer.close_pools()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"inbox: {args.messages:,} one-frame batches per round, Redis {URL}", flush=True)
    layers = {"channels-redis": (RedisChannelLayer, 0), "dorm": (DormRedisChannelLayer, 0),
              "dorm-own": (DormRedisChannelLayer, 1), "dorm-own-many": (DormRedisChannelLayer, 64)}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        for name, (layer_class, own) in layers.items():
            for what, (cpu, wall) in asyncio.run(one(layer_class, args.messages, own)).items():
                results.setdefault((name, what), []).append((cpu, wall))
                print(f"round {round_ + 1} {name:15s} {what:8s} {cpu:6.1f} us CPU, {wall:6.1f} us wall", flush=True)
    print("\nlayer           op        us CPU / us wall (median of rounds)")
    for (name, what), values in results.items():
        print(f"{name:15s} {what:8s}  {statistics.median(v[0] for v in values):6.1f} / "
              f"{statistics.median(v[1] for v in values):6.1f}")


if __name__ == "__main__":
    main()
