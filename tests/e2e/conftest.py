"""End-to-end fixtures: real server processes, real WebSocket clients.

- ``server``: daphne (the default server), started once per session.
- ``uvicorn_server``: the same ASGI application under uvicorn, started on first use.
- ``any_server``: parametrized over both, for the core guarantees.
- ``connect``: opens tracked clients (:class:`tests.e2e.client.WsClient`) and
  closes them at the end of the test.

After every test the server logs written during it must hold no traceback and
no ERROR line, and no client may have been closed with 1011.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.e2e.client import OBSERVED_CLOSE_CODES, Connect, WsClient
from tests.e2e.server import DormServer, bad_log_excerpts, start_server

# Servers started in this session, for the per-test log check.
STARTED: list[DormServer] = []
LOG_OFFSETS = pytest.StashKey[dict[str, int]]()



def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test against a real server process (daphne/uvicorn)")
    config.addinivalue_line("markers", "distributed: needs the real PostgreSQL and Redis (fails in CI without them)")
    config.addinivalue_line(
        "markers", "server_errors_expected: the test provokes server-side errors; skip the log check"
    )


def tracked(server: DormServer) -> Iterator[DormServer]:
    """Yield a started server under the per-test log check, stop it after
    (the body of a module- or session-scoped server fixture)."""
    STARTED.append(server)
    try:
        yield server
    finally:
        server.stop()
        if server in STARTED:
            STARTED.remove(server)


def _start(flavor: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DormServer]:
    yield from tracked(start_server(flavor, tmp_path_factory.mktemp(f"dorm-{flavor}")))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DormServer]:
    """Dorm under daphne: ``.url(room, **query)``, ``.db_path``, ``.log_path``."""
    yield from _start("daphne", tmp_path_factory)


@pytest.fixture(scope="session")
def uvicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DormServer]:
    """The same ASGI application under ``uvicorn --ws websockets-sansio``."""
    yield from _start("uvicorn", tmp_path_factory)


@pytest.fixture(params=["daphne", "uvicorn"])
def any_server(request: pytest.FixtureRequest) -> DormServer:
    return request.getfixturevalue("server" if request.param == "daphne" else "uvicorn_server")


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(server, room, "u1", since=5)`` -> a client whose welcome was read."""
    clients: list[WsClient] = []

    async def _connect(
        server: DormServer,
        room: str,
        user: str | None = "u1",
        *,
        since: int | str | None = None,
        expect_welcome: bool = True,
        **query: Any,
    ) -> WsClient:
        if user is not None:
            query["userId"] = user
        if since is not None:
            query["since"] = since
        client = await WsClient.open(
            server.url(room, **query), expect_welcome=expect_welcome, name=f"{server.flavor}:{room}:{user}"
        )
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        await client.close()


@pytest.fixture(autouse=True)
def _server_health(request: pytest.FixtureRequest) -> Iterator[None]:
    """No traceback/ERROR in the server logs and no 1011 close during the test."""
    offsets = {str(s.log_path): s.log_size() for s in STARTED}
    request.node.stash[LOG_OFFSETS] = offsets
    closes_before = len(OBSERVED_CLOSE_CODES)
    yield
    bad_closes = [c for c in OBSERVED_CLOSE_CODES[closes_before:] if c[1] == 1011]
    assert not bad_closes, f"the server closed with 1011 (PROTOCOL.md forbids it): {bad_closes}"
    if request.node.get_closest_marker("server_errors_expected"):
        return
    stopped = [s for s in STARTED if s.process is None or s.process.poll() is not None]
    for s in stopped:  # servers of a single test: checked now, then forgotten
        STARTED.remove(s)
    for s in [*STARTED, *stopped]:
        text = s.log_text(offsets.get(str(s.log_path), 0))
        bad = bad_log_excerpts(text)
        assert not bad, f"{s.log_path.name} logged errors during the test:\n" + "\n".join(bad[:5]) + f"\n(full log: {s.log_path})"



@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.failed and report.when in ("call", "teardown"):
        offsets = item.stash.get(LOG_OFFSETS, {})
        for s in STARTED:
            lines = s.log_text(offsets.get(str(s.log_path), 0)).splitlines()
            report.sections.append((f"{s.log_path.name} log during the test (last 60 lines)", "\n".join(lines[-60:])))
    return report
