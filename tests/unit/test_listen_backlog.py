"""``rooms.daphne_server.with_listen_backlog``: which endpoint descriptions
get Dorm's accept queue, and which keep what they say. The real socket's
queue is measured in ``tests/e2e/test_listen_backlog.py``."""

from __future__ import annotations

import pytest

from rooms.daphne_server import LISTEN_BACKLOG, LeanDaphneServer, with_listen_backlog


@pytest.mark.parametrize(
    "description",
    [
        "tcp:port=8000:interface=127.0.0.1",  # daphne's -b/-p
        "tcp6:port=8000:interface=\\:\\:1",
        "unix:/run/dorm.sock",  # daphne's -u
        "ssl:443:privateKey=key.pem:certKey=cert.pem",
        "TCP:port=8000",
    ],
)
def test_a_listening_endpoint_without_a_backlog_gets_dorms(description: str) -> None:
    assert with_listen_backlog(description) == f"{description}:backlog={LISTEN_BACKLOG}"


@pytest.mark.parametrize(
    "description",
    [
        "tcp:port=8000:backlog=100",
        "unix:address=/run/dorm.sock:backlog=5:mode=660",
        "fd:domain=INET:fileno=3",  # already listening: its queue was set by whoever opened it
        "systemd:domain=INET:index=0",
    ],
)
def test_an_endpoint_that_names_a_backlog_or_cannot_take_one_is_left_alone(description: str) -> None:
    assert with_listen_backlog(description) == description


def test_an_escaped_colon_does_not_start_an_option() -> None:
    # twisted's syntax escapes ":" inside a value; "x\:backlog=3" is part of the key's path.
    description = "ssl:443:privateKey=/keys/x\\:backlog=3.pem"
    assert with_listen_backlog(description) == f"{description}:backlog={LISTEN_BACKLOG}"


def test_daphnes_server_listens_with_it() -> None:
    server = LeanDaphneServer(application=None, endpoints=["tcp:port=0:interface=127.0.0.1", "fd:domain=INET:fileno=3"])
    assert server.endpoints == [f"tcp:port=0:interface=127.0.0.1:backlog={LISTEN_BACKLOG}", "fd:domain=INET:fileno=3"]
