"""The token-bucket interface the limits are built on.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per
second; each admitted action takes one. The embedded mode keeps buckets in
process memory (``memory.py``); the distributed mode keeps them in Redis
(``redis.py``) so a limit holds across every process behind the load balancer.
"""

from __future__ import annotations

from typing import Protocol


class TokenBuckets(Protocol):
    async def take(self, key: str, rate: float, burst: int) -> float:
        """Take one token: 0.0 when admitted, else the seconds until one is available.

        A refused take consumes nothing, so a client that keeps trying is not
        pushed further back than its own rate allows.
        """

    async def close(self) -> None:
        """Release connections (Redis); a no-op in memory."""
