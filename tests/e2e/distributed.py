"""A distributed-mode cluster of real daphne processes (shared by the
distributed-mode tests and the fault campaign, bench/faults.py).

The processes run on a PostgreSQL database and a Redis given by URL; the
caller owns both (``tests/e2e/services.py`` makes them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis

from tests.e2e.server import DormServer, start_server

LEASE_TTL = 2.0


class Cluster:
    def __init__(self, servers: list[DormServer], database_url: str, redis_url: str, env: dict[str, str]) -> None:
        self.servers = servers
        self.database_url = database_url
        self.redis_url = redis_url
        self.env = env  # the servers' extra environment (to start one again)

    def log(self, room: str, database_url: str | None = None) -> list[tuple[int, str, str, str, Any]]:
        """``(seq, type, user, client id, payload)`` of the room's log, by seq."""
        with psycopg.connect(database_url or self.database_url) as conn:
            rows = conn.execute(
                "SELECT e.seq, e.type, e.user_id, e.client_id, e.payload FROM rooms_event e "
                "JOIN rooms_room r ON r.id = e.room_id WHERE r.slug = %s ORDER BY e.seq",
                (room,),
            ).fetchall()
        return [(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

    def runs(self, room: str) -> list[tuple[str, Any, Any]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(
                "SELECT a.process, a.woke_at, a.slept_at FROM rooms_actorrun a JOIN rooms_room r ON r.id = a.room_id "
                "WHERE r.slug = %s ORDER BY a.id",
                (room,),
            ).fetchall()

    def owner_index(self, room: str) -> int:
        """Which server holds the room's lease (by the inbox in its log)."""
        value = redis.Redis.from_url(self.redis_url).get(f"dorm:lease:{room}")
        assert value is not None, f"nobody owns {room}"
        inbox = value.decode()
        for i, server in enumerate(self.servers):
            if f"inbox={inbox}" in server.log_text():
                return i
        raise AssertionError(f"no server announced inbox {inbox}")

    def restart(self, index: int, directory: Path, name: str) -> DormServer:
        """Start a new process in place of ``servers[index]`` (already stopped or killed)."""
        new = start_server("daphne", directory, extra_env=self.env, migrate=False, name=name)
        self.servers[index] = new
        return new

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def start_cluster(
    directory: Path,
    database_url: str,
    redis_url: str,
    n: int = 2,
    extra: dict[str, str] | None = None,
    *,
    lease_ttl: float = LEASE_TTL,
) -> Cluster:
    """Migrate the database (first process) and start ``n`` daphne processes."""
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "DORM_LEASE_TTL_SECONDS": str(lease_ttl), **(extra or {})}
    servers: list[DormServer] = []
    try:
        for i in range(n):
            servers.append(start_server("daphne", directory, extra_env=env, migrate=(i == 0), name=f"daphne-{i}"))
    except Exception:
        for s in servers:
            s.stop()
        raise
    return Cluster(servers, database_url, redis_url, env)
