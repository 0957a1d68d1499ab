"""A real Dorm server process (daphne or uvicorn) for the end-to-end tests.

Each server gets its own temporary directory with its own SQLite file and log
file. Tests talk to it over real WebSockets and read its database with the
stdlib ``sqlite3`` module (never through Django), so they need no test
database.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
# The hibernation tests wait for this: keep it short.
HIBERNATE_AFTER_SECONDS = 1.5
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# What a healthy server never logs (payload-free metadata is INFO).
BAD_LOG_LINE = re.compile(r"Traceback \(most recent call last\)|\bERROR\b|\bCRITICAL\b|code=1011\b")


def bad_log_excerpts(text: str, before: int = 2, after: int = 30) -> list[str]:
    """Each line of a log that ``BAD_LOG_LINE`` matches, with the lines around
    it: a traceback's frames and exception follow its first line, and what
    printed it (``Exception ignored in ...``, a thread's crash) precedes it.
    A CI run's logs are gone once it ends; the excerpt in the failure is what
    is left to read."""
    lines = text.splitlines()
    excerpts: list[str] = []
    covered = -1
    for i, line in enumerate(lines):
        if i <= covered or not BAD_LOG_LINE.search(line):
            continue
        covered = min(len(lines) - 1, i + after)
        excerpts.append("\n".join(lines[max(0, i - before) : covered + 1]))
    return excerpts


def log_text(path: Path, offset: int = 0) -> str:
    """A test process's log from ``offset`` on (bytes), decoded leniently."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_env(db_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Embedded mode, whatever the developer's shell says (``extra`` may set
    # DATABASE_URL and REDIS_URL for the distributed mode).
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "SQLITE_PATH": str(db_path),
            "DORM_HIBERNATE_AFTER_SECONDS": str(HIBERNATE_AFTER_SECONDS),
            # The tests connect with ?userId= (the local-development default).
            "DORM_ALLOW_ANONYMOUS": "1",
            "DORM_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            # These tests drive the runtime hard from one address and few
            # users; the limits have their own tests (tests/security).
            "DORM_CONNECT_RATE_PER_SECOND": "100000",
            "DORM_CONNECT_BURST": "100000",
            "DORM_MESSAGE_RATE_PER_SECOND": "100000",
            "DORM_MESSAGE_BURST": "100000",
        }
    )
    env.update(extra or {})
    return env


def server_command(flavor: str, port: int, extra_args: list[str] | None = None) -> list[str]:
    """``extra_args``: the server's own flags (daphne's ``--ping-interval 1``)."""
    extra = list(extra_args or [])
    if flavor == "daphne":
        return [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), *extra, "config.asgi:application"]
    if flavor == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            HOST,
            "--port",
            str(port),
            "--ws",
            "websockets-sansio",
            *extra,
        ]
    raise ValueError(f"unknown server flavor {flavor!r}")


@dataclass
class DormServer:
    """A running server: where to connect, its database file and its log."""

    flavor: str
    port: int
    directory: Path
    db_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    migrate: bool = True
    extra_args: list[str] = field(default_factory=list)
    _log_file: Any = field(default=None, repr=False)

    # -- addresses ------------------------------------------------------------

    def url(self, room: str, **query: Any) -> str:
        """``ws://127.0.0.1:PORT/ws/<room>?<query>`` (the room is percent-encoded)."""
        base = f"ws://{HOST}:{self.port}/ws/{quote(room, safe='')}"
        if not query:
            return base
        return f"{base}?{urlencode({k: str(v) for k, v in query.items()})}"

    def raw_url(self, path_and_query: str) -> str:
        """A URL with the path and query exactly as given (for malformed input)."""
        return f"ws://{HOST}:{self.port}{path_and_query}"

    # -- logs -----------------------------------------------------------------

    def log_size(self) -> int:
        return log_size(self.log_path)

    def log_text(self, offset: int = 0) -> str:
        return log_text(self.log_path, offset)

    # -- database -------------------------------------------------------------

    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection to the server's SQLite file (WAL: sees every commit)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=rw", uri=True, timeout=20, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=20000")
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.db() as conn:
            return list(conn.execute(sql, params).fetchall())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.db() as conn:
            conn.execute(sql, params)

    def room_id(self, slug: str) -> int | None:
        rows = self.query("SELECT id FROM rooms_room WHERE slug = ?", (slug,))
        return int(rows[0][0]) if rows else None

    def events(self, slug: str) -> list[tuple[int, str, str, str, str, int]]:
        """``(seq, type, user_id, client_id, payload, ts)`` of the room's log, by seq."""
        return [
            (int(r[0]), r[1], r[2], r[3], r[4], int(r[5]))
            for r in self.query(
                "SELECT e.seq, e.type, e.user_id, e.client_id, e.payload, e.ts FROM rooms_event e "
                "JOIN rooms_room r ON r.id = e.room_id WHERE r.slug = ? ORDER BY e.seq",
                (slug,),
            )
        ]

    def actor_runs(self, slug: str) -> list[tuple[str, str, str | None, int, str]]:
        """``(process, woke_at, slept_at, awake_ms, sleep_reason)`` of the room, oldest first."""
        return [
            (r[0], r[1], r[2], int(r[3]), r[4])
            for r in self.query(
                "SELECT a.process, a.woke_at, a.slept_at, a.awake_ms, a.sleep_reason FROM rooms_actorrun a "
                "JOIN rooms_room r ON r.id = a.room_id WHERE r.slug = ? ORDER BY a.woke_at, a.id",
                (slug,),
            )
        ]

    def snapshots(self, slug: str) -> list[tuple[int, str]]:
        return [
            (int(r[0]), r[1])
            for r in self.query(
                "SELECT s.seq, s.state FROM rooms_snapshot s JOIN rooms_room r ON r.id = s.room_id "
                "WHERE r.slug = ? ORDER BY s.seq",
                (slug,),
            )
        ]

    def create_room(self, slug: str, kind: str, *, private: bool = False, settings: str = "{}") -> None:
        """Insert a room row directly (the WebSocket cannot choose a kind yet)."""
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()) + ".000000"
        self.execute(
            "INSERT INTO rooms_room (slug, kind, private, max_connections, settings, created_at) "
            "VALUES (?, ?, ?, NULL, ?, ?)",
            (slug, kind, int(private), settings, now),
        )

    # -- life -----------------------------------------------------------------

    def start(self) -> None:
        env = server_env(self.db_path, self.extra_env)
        if self.migrate:
            self._migrate(env)
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            server_command(self.flavor, self.port, self.extra_args),
            cwd=REPO,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_listening()

    def _migrate(self, env: dict[str, str]) -> None:
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=180,
        )
        if migrate.returncode != 0:
            raise RuntimeError(
                f"migrate failed ({migrate.returncode}):\n{migrate.stdout.decode()}\n{migrate.stderr.decode()}"
            )

    def _wait_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"{self.flavor} exited with {self.process.returncode} before listening; log:\n{self.log_text()}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.flavor} did not listen on {HOST}:{self.port} within "
                    f"{START_TIMEOUT_SECONDS:.0f} s; log:\n{self.log_text()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_SECONDS)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def start_server(
    flavor: str,
    directory: Path,
    attempts: int = 3,
    *,
    extra_env: dict[str, str] | None = None,
    migrate: bool = True,
    name: str | None = None,
    extra_args: list[str] | None = None,
) -> DormServer:
    """Migrate a fresh database and start the server on a free port."""
    for attempt in range(1, attempts + 1):
        server = DormServer(
            flavor=flavor,
            port=free_port(),
            directory=directory,
            db_path=directory / "db.sqlite3",
            log_path=directory / f"{name or flavor}.log",
            extra_env=dict(extra_env or {}),
            migrate=migrate,
            extra_args=list(extra_args or []),
        )
        try:
            server.start()
        except RuntimeError as exc:
            # The free port can be taken between free_port() and the bind.
            if attempt < attempts and "address already in use" in str(exc).lower():
                continue
            raise
        return server
    raise AssertionError("unreachable")
