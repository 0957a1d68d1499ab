"""Items forwarded between processes (rooms/runtime/cluster.py): what the
owner learns of the socket's holder, whatever the item carries, and which
peer the actor is given for an item that arrives in a process's inbox."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson

from presence.process import PROCESS_ID
from rooms.runtime.cluster import Cluster, RemotePeer, _holder, encode_item
from rooms.runtime.connection import Connection
from rooms.runtime.hub import LocalHub
from rooms.runtime.messages import Binary, Frame, Join, Leave
from rooms.runtime.publish import ServerPeer


async def _send(message: dict[str, Any]) -> None:
    pass


def _decoded(message: dict[str, Any] | None) -> dict[str, Any]:
    assert message is not None
    return orjson.loads(orjson.dumps(message))  # as the channel layer hands it over


def test_every_forwarded_item_names_the_process_holding_its_socket() -> None:
    conn = Connection("r", "u1", "write", _send)
    items = [
        Join(conn, 3),
        Frame(conn, "draw", "c-1", {"x": 1, "p": "not a process"}, 0.0),
        Frame(conn, "cursor", None, None, 0.0),
        Binary(conn, b"\x00\x01"),
        Leave(conn, 1000, ""),
    ]
    for item in items:
        message = _decoded(encode_item("r", item))
        assert _holder(message) == PROCESS_ID, message


def test_items_of_an_older_release_keep_their_holder_where_they_had_one() -> None:
    # Before "h", the holder travelled as "p", which a frame's payload overwrote.
    assert _holder({"k": "join", "p": "host:1:ab"}) == "host:1:ab"
    assert _holder({"k": "leave", "p": "host:1:ab"}) == "host:1:ab"
    assert _holder({"k": "frame", "p": '{"x": 1}'}) == ""
    assert _holder({"k": "frame", "p": None}) == ""


class _Registry:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def submit(self, room: str, item: Any) -> None:
        self.items.append(item)


def _cluster() -> Any:
    """A Cluster's inbox side alone: its hub, its peers and a registry that
    records what it is given."""
    cluster = Cluster.__new__(Cluster)
    cluster.runtime = SimpleNamespace(hub=LocalHub(), registry=_Registry())
    cluster.remote_peers = {}
    cluster.local_peers = {}
    return cluster


async def test_an_item_that_comes_home_is_given_to_the_actor_with_its_local_peer() -> None:
    """A hand-over can route an item back to the process holding its socket
    (or its REST publish): the actor must answer that peer itself, not a
    RemotePeer, whose answers go out on the bus this process never reads."""
    cluster = _cluster()
    conn = Connection("r", "u1", "write", _send)
    cluster.runtime.hub.add(conn)
    server_peer = ServerPeer("api", "server", asyncio.get_running_loop().create_future())
    cluster.local_peers[server_peer.id] = server_peer
    for item in (Frame(conn, "draw", "c-1", {"x": 1}, 0.0), Frame(server_peer, "draw", "s-1", {"x": 2}, 0.0)):
        cluster._on_inbox(_decoded(encode_item("r", item)))
    remote = {"type": "dorm.item", "room": "r", "c": "elsewhere", "u": "u2", "sc": "write", "h": "host:2:cd",
              "k": "frame", "t": "draw", "i": "c-2", "p": '{"x": 3}'}
    cluster._on_inbox(remote)
    first, second, third = cluster.runtime.registry.items
    assert first.peer is conn and first.client_id == "c-1"
    assert second.peer is server_peer and not cluster.local_peers, "answered here: nothing left waiting on the bus"
    assert isinstance(third.peer, RemotePeer) and third.peer.process == "host:2:cd"
    assert cluster.remote_peers == {"elsewhere": third.peer}
