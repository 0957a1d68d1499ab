"""Usage metering in the distributed mode: two real daphne processes on
PostgreSQL and Redis, clients spread over both; the per-minute rows (added up
by both processes' upserts) match the scripted session exactly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from billing.models import Metric
from tests.e2e.billing_session import COUNTERS, latency_sql, scripted_session, usage_sql, wait_for_rows
from tests.e2e.client import room_name
from tests.e2e.conftest import STARTED
from tests.e2e.server import DormServer, start_server
from tests.e2e.services import REDIS_TEST_URL, check_redis, fresh_postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]


@pytest.fixture(scope="module")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[DormServer]]]:
    check_redis()
    with fresh_postgres_database() as url:
        env = {
            "DATABASE_URL": url,
            "REDIS_URL": REDIS_TEST_URL,
            "DORM_LEASE_TTL_SECONDS": "2",
            "DORM_BILLING_FLUSH_SECONDS": "0.5",
            "DORM_HIBERNATE_AFTER_SECONDS": "60",
        }
        directory = tmp_path_factory.mktemp("billing-cluster")
        servers: list[DormServer] = []
        try:
            for i in range(2):
                servers.append(start_server("daphne", directory, extra_env=env, migrate=(i == 0), name=f"billing-{i}"))
            STARTED.extend(servers)
            yield url, servers
        finally:
            for s in servers:
                s.stop()


async def test_two_processes_add_up_exactly(pg_cluster: tuple[str, list[DormServer]]) -> None:
    url, (a, b) = pg_cluster
    room = room_name("meter-pg")
    started = time.monotonic()
    # u1 and u3 on process A, u2 on B: joins, frames and deliveries cross.
    urls = [a.url(room, userId="u1"), b.url(room, userId="u2"), a.url(room, userId="u3")]
    expected = await scripted_session(urls)

    def read() -> dict:
        with psycopg.connect(url) as conn:
            row = conn.execute(usage_sql("%s"), (room,)).fetchone()
        assert row is not None
        got = dict(zip(COUNTERS, (int(v or 0) for v in row[: len(COUNTERS)])))
        got["actor_awake_ms"] = int(row[len(COUNTERS)] or 0)
        return got

    got = await wait_for_rows(read, expected)
    assert {k: got[k] for k in COUNTERS} == {k: expected[k] for k in COUNTERS}
    assert 0 < got["actor_awake_ms"] <= (time.monotonic() - started) * 1000 + 1000
    with psycopg.connect(url) as conn:
        latency = {(m, bk): int(n) for m, bk, n in conn.execute(latency_sql("%s"), (room,)).fetchall()}
        processes = conn.execute(
            "SELECT COUNT(DISTINCT a.process) FROM rooms_actorrun a JOIN rooms_room r ON r.id = a.room_id WHERE r.slug = %s",
            (room,),
        ).fetchone()
    assert sum(n for (m, _), n in latency.items() if m == Metric.PROCESSING) == expected["_processing_count"]
    assert {bk: n for (m, bk), n in latency.items() if m == Metric.ROUND_TRIP} == expected["_round_trip"]
    assert processes == (1,)  # one owner: the other process only forwarded and fanned out
