"""The group commit's statements on the databases Dorm ships for: the checks
of tests/fixtures/commit_checks.py (one ``INSERT`` for a round of events
alone, all or nothing, a failure kept to its room, another writer's lock
waited for), each run in a process of its own whose Django runs on a fresh
SQLite file (WAL, ``synchronous=FULL``, as ``make run``) or on a fresh
database of the machine's PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.services import fresh_postgres_database
from tests.fixtures import commit_checks

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
RUN_CHECKS = "import django; django.setup(); from tests.fixtures import commit_checks; commit_checks.main()"


def run_checks(database: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SQLITE_PATH")}
    env.update(database, DJANGO_SETTINGS_MODULE="config.settings", DJANGO_DEBUG="false")
    done = subprocess.run(
        [sys.executable, "-c", RUN_CHECKS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_commit_statements_on_an_sqlite_file(tmp_path: Path) -> None:
    lines = run_checks({"SQLITE_PATH": str(tmp_path / "db.sqlite3")})
    assert lines == ["sqlite"] + [f"passed {check.__name__}" for check in commit_checks.checks_for("sqlite")]


@pytest.mark.distributed
def test_commit_statements_on_postgres() -> None:
    with fresh_postgres_database() as url:
        lines = run_checks({"DATABASE_URL": url})
    assert lines == ["postgresql"] + [f"passed {check.__name__}" for check in commit_checks.checks_for("postgresql")]
