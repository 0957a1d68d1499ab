"""Rounds of events alone on the event loop's own PostgreSQL connection
(``rooms/runtime/loop_commit.py``): the checks of
tests/fixtures/loop_commit_checks.py, in a process of its own on a fresh
database of the machine's PostgreSQL, behind a proxy that freezes and cuts
it. The same statements' guarantees on the database thread are in
test_commit_statements.py; a real server on this path in test_distributed.py
and test_db_outage.py (the default)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.client import WsClient, room_name
from tests.e2e.distributed import start_cluster
from tests.e2e.services import REDIS_TEST_URL, fresh_postgres_database
from tests.e2e.test_leaks import LEAK_ENV, process_gauges
from tests.fixtures import loop_commit_checks

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[2]
RUN_CHECKS = "import django; django.setup(); from tests.fixtures import loop_commit_checks; loop_commit_checks.main()"


def test_loop_commits_on_postgres() -> None:
    with fresh_postgres_database() as url:
        host_port = url.split("@", 1)[1].split("/", 1)[0]
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SQLITE_PATH")}
        env.update(
            DATABASE_URL=url,
            DORM_PG_PROXY_TARGET=host_port,
            DORM_DB_TIMEOUT_SECONDS="1",
            DJANGO_SETTINGS_MODULE="config.settings",
            DJANGO_DEBUG="false",
        )
        done = subprocess.run([sys.executable, "-c", RUN_CHECKS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"passed {check.__name__}" for check in loop_commit_checks.CHECKS], done.stdout + done.stderr


@pytest.mark.parametrize("on_loop", [True, False], ids=["on-loop", "off"])
async def test_a_server_commits_events_on_its_loop_unless_turned_off(on_loop: bool, tmp_path: Path) -> None:
    """A real daphne on PostgreSQL: acknowledged draws are in the log in
    order, and its /metrics counts the rounds its loop committed (none with
    ``DORM_DB_COMMITS_ON_LOOP=false``: every round went to the thread)."""
    env = {**LEAK_ENV, "DORM_DB_COMMITS_ON_LOOP": "true" if on_loop else "false"}
    with fresh_postgres_database() as url:
        cluster = await asyncio.to_thread(start_cluster, tmp_path, url, REDIS_TEST_URL, 1, env)
        try:
            server = cluster.servers[0]
            room = room_name("loopc")
            client = await WsClient.open(server.url(room, userId="u1"))
            try:
                acks = [await client.request("draw", {"n": n}) for n in range(20)]
                assert [a["type"] for a in acks] == ["ack"] * 20, acks
            finally:
                await client.close()
            log = cluster.log(room)
            assert [(seq, payload["n"]) for seq, _t, _u, _c, payload in log] == [(a["seq"], n) for n, a in enumerate(acks)]
            commits = (await asyncio.to_thread(process_gauges, server))["commits_on_loop"]
            assert (commits >= 20) if on_loop else (commits == 0), commits
        finally:
            await asyncio.to_thread(cluster.stop)
