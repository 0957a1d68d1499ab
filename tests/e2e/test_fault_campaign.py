"""The fault campaign's short version (bench/faults.py --short): two daphne
processes in the distributed mode, a few rooms of real clients, and every
fault in sequence (SIGKILL and restart of a process, Redis restarted empty,
PostgreSQL paused then reset through a proxy, every client socket cut, a
client that stops reading); then nothing acknowledged is lost, nothing is
applied or delivered twice, and every client's view equals the log.

Like the other distributed-mode tests it fails in CI (``CI`` set) when
PostgreSQL or Redis is unreachable, and skips with the reason elsewhere.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.faults import ALL_FAULTS, Config, run_campaign
from tests.e2e.services import check_redis

pytestmark = [pytest.mark.e2e, pytest.mark.distributed, pytest.mark.timeout(240)]


async def test_short_fault_campaign_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    check_redis()  # the machine's Redis stands for "Redis is installed and runs here"
    started = time.monotonic()
    result = await run_campaign(Config.short(), tmp_path)
    print(result.table())
    print(f"campaign took {time.monotonic() - started:.1f} s")
    assert [f.name for f in result.faults] == list(ALL_FAULTS)
    assert result.acked > 0 and result.in_log >= result.acked
    assert result.lost == 0, result.problems
    assert result.duplicated_applied == 0 and result.duplicated_delivered == 0, result.problems
    assert result.views_differing == 0, result.problems
    assert result.unacked_at_end == 0
    assert not result.problems, result.problems
    for fault in result.faults:
        assert fault.recovered_after is not None, f"{fault.name} did not recover"
    assert result.slow_closes >= 1, "the slow client was closed with 4408"
