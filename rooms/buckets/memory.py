"""Token buckets in process memory (embedded mode)."""

from __future__ import annotations

import time
from collections import OrderedDict

# Most buckets kept: one per client address and per (room, user). Past this,
# the least recently used go first; a bucket idle long enough to be full again
# is dropped earlier (it is the same as a new one).
MAX_BUCKETS = 200_000


class MemoryBuckets:
    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        # key -> [tokens, last refill (monotonic seconds), time it is full again]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._max = max_buckets

    async def take(self, key: str, rate: float, burst: int) -> float:
        return self.take_now(key, rate, burst, time.monotonic())

    def take_now(self, key: str, rate: float, burst: int, now: float) -> float:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            tokens = float(burst)
        else:
            buckets.move_to_end(key)
            tokens = min(float(burst), bucket[0] + (now - bucket[1]) * rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / rate
        full_at = now + (burst - tokens) / rate
        if bucket is None:
            buckets[key] = [tokens, now, full_at]
            self._prune(now)
        else:
            bucket[0], bucket[1], bucket[2] = tokens, now, full_at
        return wait

    def _prune(self, now: float) -> None:
        buckets = self._buckets
        # A few full buckets per insert keeps the cost per call constant.
        for _ in range(4):
            if not buckets:
                return
            key, oldest = next(iter(buckets.items()))
            if oldest[2] > now and len(buckets) <= self._max:
                return
            del buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

    async def close(self) -> None:
        return None
