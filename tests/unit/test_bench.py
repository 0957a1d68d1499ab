"""The benchmarks: every command line loads, the fan-out frame accounting, the small in-process runs (no timings)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


# What some benchmarks' --help must mention beyond the usage line.
HELP_MENTIONS = {
    "fanout.py": ["dorm-asgi-send", "--json"],
    "cluster.py": ["naive-pubsub-2p"],
    "suite.py": ["miniflare", "--py-spy"],
    "qa_spike.py": ["--rates", "--clients"],
    "top_frames.py": ["--under"],
}
# Every benchmark with a command line: one that no longer imports fails here,
# not months later in a developer's hands.
COMMAND_LINES = sorted(p.name for p in BENCH.glob("*.py") if "argparse" in p.read_text())


def test_the_command_lines_found_include_the_documented_ones() -> None:
    assert set(HELP_MENTIONS) <= set(COMMAND_LINES)
    assert len(COMMAND_LINES) >= 15


@pytest.mark.parametrize("script", COMMAND_LINES)
def test_every_benchmark_answers_help(script: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.startswith("usage:"), out.stdout
    for mention in HELP_MENTIONS.get(script, []):
        assert mention in out.stdout, (script, mention)


def test_top_frames_shares_and_what_is_under_a_frame(tmp_path: Any) -> None:
    """py-spy raw lines: frames outermost first, ';'-joined, then a count."""
    profile = tmp_path / "raw.txt"
    profile.write_text(
        "run (loop.py:1);flush (presence.py:10);send (io.py:5) 6\n"
        "run (loop.py:1);flush (presence.py:10) 2\n"
        "run (loop.py:1);parse (frames.py:7) 2\n"
        "\n"
    )
    script = [sys.executable, str(BENCH / "top_frames.py"), str(profile)]
    out = subprocess.run(script, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "10 samples" in out
    assert " 60.0% send (io.py:5)" in out.split("-- inclusive --")[0]  # self
    assert " 80.0% flush (presence.py:10)" in out.split("-- inclusive --")[1]
    out = subprocess.run([*script, "--under", "flush", "--depth", "2"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert "80.0% under 'flush'" in out
    assert " 60.0% send:5" in out and " 20.0% self" in out
    assert "parse" not in out


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("usage_flush.py", ["--rooms", "200", "--rounds", "1"], "usage flush of 200 rooms: median"),
        ("commit_hop.py", ["--commits", "20", "--rounds", "1"], "hot_guarded"),
    ],
)
def test_in_process_benchmarks_run(script: str, args: list[str], expected: str, tmp_path: Any) -> None:
    """The in-process benchmarks on a small SQLite database of their own."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SQLITE_PATH", "DJANGO_SETTINGS_MODULE")}
    env["SQLITE_PATH"] = str(tmp_path / "bench.sqlite3")
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120,
                         check=True, env=env)
    assert expected in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        # Every reader gets every event.
        ("bus_read.py", ["--events", "500"], ["round 1 bus", "round 1 pubsub-hiredis", "round 1 pubsub-python"]),
        # Both ways publish batches of both sizes.
        ("bus_publish.py", ["--batches", "50"], ["1 event(s)  publisher", "1 event(s)  redis-py-pipeline",
                                                  "3 event(s)  publisher", "3 event(s)  redis-py-pipeline"]),
        # Both layers send and receive.
        ("inbox.py", ["--messages", "200"], ["channels-redis  send", "channels-redis  receive", "dorm            send",
                                             "dorm            receive", "dorm-own        send",
                                             "dorm-own        receive", "dorm-own-many   receive"]),
    ],
)
def test_redis_benchmarks_run(script: str, args: list[str], expected: list[str], tmp_path: Any) -> None:
    """The in-process Redis benchmarks, small, on the machine's Redis."""
    from tests.e2e.services import REDIS_TEST_URL, check_redis

    check_redis()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(SQLITE_PATH=str(tmp_path / "bench.sqlite3"), REDIS_URL=REDIS_TEST_URL)
    out = subprocess.run([sys.executable, str(BENCH / script), *args, "--rounds", "1"],
                         capture_output=True, text=True, timeout=120, check=True, env=env)
    for row in expected:
        assert row in out.stdout, out.stdout


def test_storm_totals_are_per_join_over_the_tenths_given(loadgen) -> None:
    import suite

    slices = [
        {"members": 500, "joins": 500, "seconds": 1.0, "server_s": 0.5, "generator_s": 0.25, "frames": 1000, "bytes": 512000},
        {"members": 1000, "joins": 500, "seconds": 4.0, "server_s": 1.5, "generator_s": 1.0, "frames": 0, "bytes": 0},
    ]
    t = suite.storm_totals(slices)
    assert t["joins_per_s"] == pytest.approx(200.0)  # 1,000 joins in 5 s, not the mean of 500 and 125
    assert t["cpu_ms"] == pytest.approx(2.0)
    assert (t["server_pct"], t["generator_pct"]) == (pytest.approx(40.0), pytest.approx(25.0))
    assert (t["frames"], t["kib"]) == (pytest.approx(1.0), pytest.approx(0.5))


async def test_the_storm_client_takes_the_welcome_unparsed_and_counts_the_rest(loadgen) -> None:
    import suite

    rec = suite.CountingRecorder()
    client = suite.StormClient(rec, "127.0.0.1", 1, "/ws/r")
    client._frame(0x80, 1, b'{"type":"welcome","presence":[' + b'{"userId":"u"},' * 1000 + b"{}]}")
    assert client.welcome.result() == {"type": "welcome"}
    client._frame(0x80, 1, b'{"type":"user_joined","userId":"u2"}')
    assert (rec.frames, rec.bytes) == (1, 36)
