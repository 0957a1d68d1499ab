"""Real servers for the security tests: daphne (or uvicorn) in a subprocess.

Each server gets its own copy of a migrated SQLite file and its own log file,
which the tests read (the no-tokens-in-logs test reads what an operator would).
Self-contained on purpose: nothing here is shared with tests/e2e.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 20.0


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> str:
        """Stop the server (flushing its logs) and return everything it logged."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DORM_", "DJANGO_", "REDIS_URL", "DATABASE_URL"))}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("security-db") / "template.sqlite3"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=server_env(SQLITE_PATH=str(path)),
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture
def start_server(migrated_db: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def _start(server: str = "daphne", rooms: dict[str, int] | None = None, **env: Any) -> Server:
        """``rooms``: slug -> max_connections, created in the server's database first."""
        port = _free_port()
        db = tmp_path / f"db-{port}.sqlite3"
        shutil.copy(migrated_db, db)
        if rooms:
            with sqlite3.connect(db) as conn:
                conn.executemany(
                    "INSERT INTO rooms_room (slug, kind, private, max_connections, settings, created_at)"
                    " VALUES (?, 'whiteboard', 0, ?, '{}', datetime('now'))",
                    list(rooms.items()),
                )
        log_path = tmp_path / f"{server}-{port}.log"
        if server == "daphne":
            # The access log on: an operator may turn it on, it must stay clean too.
            cmd = ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "--access-log", "-", "config.asgi:application"]
        else:
            cmd = ["-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port), "--ws", "websockets-sansio"]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, *cmd],
                cwd=ROOT,
                env=server_env(SQLITE_PATH=str(db), **{k: str(v) for k, v in env.items()}),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started = Server(port, process, log_path)
        servers.append(started)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return started
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server} did not start:\n{started.stop()}")
            time.sleep(0.05)

    yield _start
    for server in servers:
        server.stop()
