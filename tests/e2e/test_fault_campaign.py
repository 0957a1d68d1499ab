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

import re
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
    try:
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
    except AssertionError:
        # Last in the output, where a CI excerpt (its tail) shows it.
        print(_diagnosis(result.problems, tmp_path))
        raise


def _diagnosis(problems: list[str], directory: Path, lines_per_room: int = 40) -> str:
    """Every problem, then the servers' warnings, wakes and sleeps of the
    rooms whose clients (``r<room>u<client>``) they name: where the room ran
    and why it moved (metadata only: the logs never hold payloads)."""
    out = ["---------------- campaign problems ----------------", *problems[:30]]
    wanted = sorted({int(m.group(1)) for p in problems for m in re.finditer(r"\br(\d+)u\d+", p)})[:2]
    logs = {log.stem: log.read_text(errors="replace").splitlines() for log in sorted(directory.glob("*.log"))}
    for index in wanted:
        pattern = re.compile(rf"room=fault-[0-9a-f]+-{index}\b")
        found = [
            (line[:23], f"{name}: {line}")
            for name, lines in logs.items()
            for line in lines
            if pattern.search(line) and re.search(r" (WARNING|ERROR) | dorm\.rooms (wake|sleep) ", line)
        ]
        out.append(f"---------------- server log lines of room {index} (last {lines_per_room}) ----------------")
        out += [line for _, line in sorted(found)[-lines_per_room:]]
    return "\n".join(out)
