"""The real PostgreSQL and Redis of the distributed-mode tests.

Where a service is unreachable the tests skip with the reason on a laptop
and fail in CI (``CI`` set): CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get("DORM_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("DORM_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")


def unavailable(what: str, why: str) -> None:
    message = f"{what} unreachable ({why}); the distributed-mode tests need it"
    if os.environ.get("CI"):
        pytest.fail(message + " and CI must run them", pytrace=False)
    pytest.skip(message)


def check_redis(url: str = REDIS_TEST_URL) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        unavailable(f"Redis at {url}", f"{type(exc).__name__}: {exc}")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    import psycopg

    name = f"dorm_e2e_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL}", f"{type(exc).__name__}: {exc}")
        raise  # unreachable: unavailable() raises
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        yield f"{base}/{name}"
    finally:
        try:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.close()


class PrivateRedis:
    """A redis-server of the test's own, so a test may stop and restart it
    without disturbing anything else that uses the machine's Redis."""

    def __init__(self, directory: Path, port: int, args: tuple[str, ...] = (), password: str | None = None) -> None:
        self.directory = directory
        self.port = port
        self.args = args  # more of redis-server's options (TLS, a password, a socket)
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server", "not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), *self.args, *(("--requirepass", self.password) if self.password else ())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        import redis

        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5).ping()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
