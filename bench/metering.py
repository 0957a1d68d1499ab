"""The usage meter's own cost on the hot path, per message of the fan-out benchmark.

    .venv/bin/python bench/metering.py

A message of bench/fanout.py costs the server these meter calls: one
``frame_in`` (consumer), one ``processed`` (actor, after fan-out), one
``delivered`` (hub, once per event whatever the number of sockets) and one
``committed`` per group commit (counted here once per message: the worst
case, a batch of one). This times them with metering on and off (the calls
then return at once), best of several rounds, and prints microseconds per
message; compare with the server CPU per message that bench/fanout.py reports
(server CPU share x 1 s / messages per second) to get the overhead share.
Fan-out CPU scales with deliveries while the meter's does not, so the share
only falls as rooms grow.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

ROUNDS = 7
MESSAGES = 200_000


def per_message_us(enabled: bool) -> float:
    from billing.meter import Meter

    meter = Meter()
    meter.enabled = enabled
    frame_in, processed, delivered, committed = meter.frame_in, meter.processed, meter.delivered, meter.committed
    clock = time.perf_counter
    room = "bench-room"
    text = '{"type":"draw","seq":17,"userId":"u1","payload":{"x":1,"y":2},"ts":1732250000123}'
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(MESSAGES):
            # The two clock reads and the byte counts the runtime adds for
            # the meter, then the four calls.
            received = clock()
            frame_in(room, len(text) if text.isascii() else len(text.encode()))
            processed(room, clock() - received)
            delivered(room, 49, len(text) if text.isascii() else len(text.encode()))
            committed(room, 1, 1, 40)
        best = min(best, time.perf_counter() - start)
        meter.take()
    return best / MESSAGES * 1e6


def main() -> None:
    import django

    django.setup()
    on = per_message_us(True)
    off = per_message_us(False)
    print(f"meter on:  {on:.3f} us per message")
    print(f"meter off: {off:.3f} us per message")
    print(f"cost:      {on - off:.3f} us per message")


if __name__ == "__main__":
    main()
