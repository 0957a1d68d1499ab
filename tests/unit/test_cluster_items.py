"""Items forwarded between processes (rooms/runtime/cluster.py): what the
owner learns of the socket's holder, whatever the item carries."""

from __future__ import annotations

from typing import Any

import orjson

from presence.process import PROCESS_ID
from rooms.runtime.cluster import _holder, encode_item
from rooms.runtime.connection import Connection
from rooms.runtime.messages import Binary, Frame, Join, Leave


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
