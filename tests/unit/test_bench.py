"""The fan-out benchmark's command line and frame accounting (no servers, no timings)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def loadgen():
    sys.path.insert(0, str(BENCH))
    try:
        import _loadgen

        yield _loadgen
    finally:
        sys.path.remove(str(BENCH))


def test_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / "fanout.py"), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "dorm-asgi-send" in out.stdout
    assert "--json" in out.stdout


@pytest.mark.parametrize(
    "frame",
    [
        # Dorm: compact JSON, the payload as the sender wrote it.
        b'{"type":"draw","seq":7,"userId":"s1","payload":{"x":1,"y":2,"k":"%d","t":"%d"},"ts":1}',
        # The naive baseline: json.dumps' default spacing.
        b'{"type": "draw", "userId": "s1", "payload": {"x": 1, "y": 2, "k": "%d", "t": "%d"}, "ts": 1}',
    ],
)
def test_recorder_counts_draws_and_acks(loadgen, frame: bytes) -> None:
    rec = loadgen.Recorder()
    for _ in range(3):
        rec.deliveries.append(0)
        rec.send_times.append(time.perf_counter())
    rec.first_measured = 1
    sent_ns = time.perf_counter_ns()
    rec.on_frame(frame % (0, sent_ns))  # before the window: counted, no latency
    rec.on_frame(frame % (2, sent_ns))
    rec.on_frame(frame % (2, sent_ns))
    rec.on_frame(b'{"type":"ack","id":"2","seq":7}')
    rec.on_frame(b'{"type":"error","reason":"invalid_message","id":"1"}')
    assert list(rec.deliveries) == [1, 0, 2]
    assert len(rec.latencies_ms) == 2 and all(ms >= 0 for ms in rec.latencies_ms)
    assert rec.acks == 1
    assert rec.refused == {"invalid_message": 1}


@pytest.mark.parametrize(("script", "expected"), [("cluster.py", "naive-pubsub-2p"), ("suite.py", "miniflare")])
def test_other_benchmarks_help_runs(script: str, expected: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert expected in out.stdout


def test_qa_spike_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / "qa_spike.py"), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--rates" in out.stdout and "--clients" in out.stdout
