"""Fixed-bucket latency histograms: mergeable by adding counts, bucket by bucket.

Bucket ``i`` holds values in ``(BOUND[i-1], BOUND[i]]`` milliseconds, with
bounds growing by 2**(1/4) (19 %) from 0.05 ms to about a minute; the last
bucket is everything above. The same bounds in every process and every
minute, so histograms of any rooms, processes and minutes merge by adding
counts, and a percentile read from the merged counts is the upper bound of
the bucket holding the exact nearest-rank value: never more than one bucket
(19 %) off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

FIRST_BOUND_MS = 0.05
STEPS_PER_DOUBLING = 4
BUCKETS = 82  # the last bound is ~62 s; bucket BUCKETS is the overflow
BOUNDS_MS: tuple[float, ...] = tuple(FIRST_BOUND_MS * 2 ** (i / STEPS_PER_DOUBLING) for i in range(BUCKETS))
OVERFLOW = BUCKETS

_SCALE = STEPS_PER_DOUBLING / math.log(2)


def bucket_of(ms: float) -> int:
    """The index of the bucket holding ``ms``."""
    if ms <= FIRST_BOUND_MS:
        return 0
    i = math.ceil(math.log(ms / FIRST_BOUND_MS) * _SCALE - 1e-9)
    # Float rounding can land one off near a bound: fix it with the table.
    if i < BUCKETS and ms > BOUNDS_MS[i]:
        i += 1
    elif i > 0 and i <= BUCKETS and ms <= BOUNDS_MS[i - 1]:
        i -= 1
    return i if i < BUCKETS else OVERFLOW


def upper_ms(bucket: int) -> float:
    """What a percentile landing in ``bucket`` reports (its upper bound)."""
    return BOUNDS_MS[bucket] if bucket < BUCKETS else math.inf


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for h in histograms:
        for bucket, count in h.items():
            total[bucket] = total.get(bucket, 0) + count
    return total


def percentile(counts: Mapping[int, int], q: float) -> float | None:
    """Nearest-rank ``q`` (0 < q <= 1) of the merged counts, as a bucket's upper bound."""
    n = sum(counts.values())
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return upper_ms(bucket)
    return upper_ms(max(counts))  # pragma: no cover - seen reaches n


def summary(counts: Mapping[int, int]) -> dict[str, float | None]:
    return {
        "count": sum(counts.values()),
        "p50": percentile(counts, 0.50),
        "p95": percentile(counts, 0.95),
        "p99": percentile(counts, 0.99),
    }
