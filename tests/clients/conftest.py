"""Fixtures of the client tests: a real daphne server, tool checks, artifacts.

The clients are tested against the same real server the end-to-end tests use
(tests/e2e/server.py: daphne, a temporary SQLite file, anonymous access on).
Browser and Node tests need /usr/bin/chromium and node: without them a test
skips with the reason, except under CI (env CI set), where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import DormServer, bad_log_excerpts, start_server

CHROMIUM = os.environ.get("DORM_CHROMIUM", "/usr/bin/chromium")
# This machine refuses bursts of connections without the background-networking
# flags; --disable-quic keeps Chromium on plain TCP to localhost.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = {
    "chromium": "apt-get install -y chromium chromium-driver  (Debian's build; never a downloaded browser)",
    "node": "install Node.js 20 or newer (Debian: apt-get install -y nodejs)",
}



def require_tool(name: str, path: str | None) -> str:
    """The tool's path; skip without it, but fail under CI (it must be installed there)."""
    if path and (os.path.isabs(path) and os.access(path, os.X_OK) or shutil.which(path)):
        return path if os.path.isabs(path) else str(shutil.which(path))
    message = f"{name} not found ({path}); install: {INSTALL_HINT[name]}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def dorm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DormServer]:
    """One daphne server for the client tests (rooms are unique per test)."""
    server = start_server("daphne", tmp_path_factory.mktemp("dorm-clients"), name="clients")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[DormServer]:
    """A server of the test's own, for tests that stop and restart it."""
    directory = tmp_path / "server"
    directory.mkdir()
    server = start_server("daphne", directory, name="restartable")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _server_log_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """No traceback or ERROR line in the shared server's log during the test."""
    if "dorm_server" not in request.fixturenames:
        yield
        return
    server: DormServer = request.getfixturevalue("dorm_server")
    offset = server.log_size()
    yield
    bad = bad_log_excerpts(server.log_text(offset))
    assert not bad, "server logged errors:\n" + "\n".join(bad[:5]) + f"\n(full log: {server.log_path})"


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $DORM_ARTIFACTS_DIR if set, else a pytest temp dir."""
    configured = os.environ.get("DORM_ARTIFACTS_DIR")
    path = Path(configured) if configured else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
