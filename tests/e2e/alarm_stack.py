"""What the alarm tests run against, in either mode, with real processes.

- ``embedded``: one daphne server on SQLite; its in-process scheduler
  dispatches alarms (no Celery, no Redis, no broker).
- ``celery``: a daphne server on a fresh PostgreSQL database and Redis (a
  dedicated db number), plus ``celery -A config worker`` and
  ``celery -A config beat`` subprocesses on that Redis as broker.

Both load the ``probe`` kind of ``tests/e2e/kinds.py`` as the default kind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from tests.e2e.conftest import STARTED
from tests.e2e.server import REPO, DormServer, log_size, log_text, server_env, start_server

ALARM_REDIS_URL = os.environ.get("DORM_TEST_ALARM_REDIS_URL", "redis://127.0.0.1:6379/6")
# Short enough for fast tests, long enough to tell the delays apart.
RETRY_BASE_SECONDS = 0.5
CLAIM_SECONDS = 3.0
LEASE_TTL_SECONDS = 2.0


def alarm_env(mode: str, database_url: str | None, queue: str) -> dict[str, str]:
    env = {
        "DORM_EXTRA_KINDS": "probe=tests.e2e.kinds.AlarmProbe",
        "DORM_DEFAULT_KIND": "probe",
        "DORM_ALARM_RETRY_BASE_SECONDS": str(RETRY_BASE_SECONDS),
        "DORM_ALARM_CLAIM_SECONDS": str(CLAIM_SECONDS),
        "DORM_LEASE_TTL_SECONDS": str(LEASE_TTL_SECONDS),
    }
    if mode == "celery":
        assert database_url
        env.update({"DATABASE_URL": database_url, "REDIS_URL": ALARM_REDIS_URL, "CELERY_QUEUE": queue})
    return env


class CeleryProcess:
    """``celery -A config worker|beat`` with its log file; the log check covers it."""

    def __init__(self, role: str, directory: Path, env: dict[str, str]) -> None:
        self.role = role
        self.flavor = f"celery-{role}"
        self.directory = directory
        self.env = env
        self.log_path = directory / f"celery-{role}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._offset = 0

    def command(self) -> list[str]:
        base = [sys.executable, "-m", "celery", "-A", "config", self.role, "-l", "info"]
        if self.role == "worker":
            return [*base, "-n", f"dorm-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        return [*base, "-s", str(self.directory / "beat-schedule"), "--pidfile", ""]

    def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        self._offset = self.log_size()
        self._log_file = self.log_path.open("ab")
        env = server_env(self.directory / "unused.sqlite3", self.env)
        self.process = subprocess.Popen(
            self.command(), cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        offset = self._offset
        ready = "ready." if self.role == "worker" else "beat: Starting"
        deadline = time.monotonic() + timeout
        while ready not in self.log_text(offset):
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = self.log_text(offset)
                self.stop()
                raise RuntimeError(f"celery {self.role} did not start; log:\n{text}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._close_log()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_size(self) -> int:
        return log_size(self.log_path)

    def log_text(self, offset: int = 0) -> str:
        return log_text(self.log_path, offset)


class AlarmStack:
    def __init__(self, mode: str, directory: Path, database_url: str | None = None, flavor: str = "daphne") -> None:
        self.mode = mode
        self.flavor = flavor
        self.directory = directory
        self.database_url = database_url
        self.env = alarm_env(mode, database_url, f"dorm-test-{uuid.uuid4().hex[:8]}")
        self.server: DormServer | None = None
        self.worker: CeleryProcess | None = None
        self.beat: CeleryProcess | None = None

    # -- life -------------------------------------------------------------------

    def start(self) -> AlarmStack:
        self.server = start_server(self.flavor, self.directory, extra_env=self.env, name=f"{self.flavor}-{self.mode}")
        STARTED.append(self.server)
        if self.mode == "celery":
            self.worker = CeleryProcess("worker", self.directory, self.env)
            self.beat = CeleryProcess("beat", self.directory, self.env)
            for p in (self.worker, self.beat):
                p.spawn()
            for p in (self.worker, self.beat):
                p.wait_ready()
            STARTED.extend([self.worker, self.beat])  # type: ignore[list-item]
        return self

    def stop(self) -> None:
        for p in (self.beat, self.worker):
            if p is not None and p.process is not None and p.process.poll() is None:
                p.process.send_signal(signal.SIGTERM)  # both at once
        for p in (self.beat, self.worker, self.server):
            if p is not None:
                p.stop()

    def restart_all(self) -> None:
        """Stop every process (SIGTERM), then start them again on the same database."""
        assert self.server is not None
        self.stop()
        celery = [p for p in (self.worker, self.beat) if p is not None]
        for p in celery:
            p.spawn()
        self.server.migrate = False
        self.server.start()
        for p in celery:
            p.wait_ready()

    @property
    def dispatcher(self) -> Any:
        """The process that runs the dispatcher: the worker, or the embedded server."""
        return self.worker if self.mode == "celery" else self.server

    def kill_dispatcher(self) -> None:
        d = self.dispatcher
        if isinstance(d, CeleryProcess):
            d.kill()
        else:
            assert d.process is not None
            d.process.send_signal(signal.SIGKILL)
            d.process.wait(10)

    def start_dispatcher(self) -> None:
        d = self.dispatcher
        if isinstance(d, DormServer):
            d.migrate = False
        d.start()

    # -- the database -------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.mode == "celery":
            import psycopg

            with psycopg.connect(self.database_url) as conn:  # type: ignore[arg-type]
                return list(conn.execute(sql.replace("?", "%s"), params).fetchall())
        assert self.server is not None
        return self.server.query(sql, params)

    def rang(self, room: str) -> list[dict[str, Any]]:
        """Payloads of the room's durable ``rang`` events, by seq."""
        rows = self.query(
            "SELECT e.payload FROM rooms_event e JOIN rooms_room r ON r.id = e.room_id "
            "WHERE r.slug = ? AND e.type = 'rang' ORDER BY e.seq",
            (room,),
        )
        return [orjson.loads(r[0]) for r in rows]

    def alarms(self, room: str) -> list[tuple[str, str, int, str, Any]]:
        """``(name, status, attempts, last_error, claimed_until)`` of the room's alarm rows."""
        return [
            (r[0], r[1], int(r[2]), r[3], r[4])
            for r in self.query(
                "SELECT a.name, a.status, a.attempts, a.last_error, a.claimed_until FROM rooms_alarm a "
                "JOIN rooms_room r ON r.id = a.room_id WHERE r.slug = ? ORDER BY a.name",
                (room,),
            )
        ]

    def runs(self, room: str) -> list[tuple[str, Any, str]]:
        """``(woke_at, slept_at, process)`` of the room's actor runs, oldest first
        (``process`` is ``host:pid``)."""
        return [
            (r[0], r[1], r[2])
            for r in self.query(
                "SELECT a.woke_at, a.slept_at, a.process FROM rooms_actorrun a JOIN rooms_room r ON r.id = a.room_id "
                "WHERE r.slug = ? ORDER BY a.id",
                (room,),
            )
        ]

    def logs(self) -> str:
        return "".join(p.log_text() for p in (self.server, self.worker, self.beat) if p is not None)
