"""Fan-out: framing, direct writes, the welcome buffer and dead sockets."""

from __future__ import annotations

from typing import Any

import pytest

from rooms.runtime.connection import Connection, ConnectionState
from rooms.runtime.direct_write import text_frame
from rooms.runtime.hub import LocalHub


def parse_frame(frame: bytes) -> tuple[int, bool, str]:
    """(opcode, masked, text) of a single server frame."""
    first, second = frame[0], frame[1]
    assert first & 0x80, "FIN must be set"
    n, offset = second & 0x7F, 2
    if n == 126:
        n, offset = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, offset = int.from_bytes(frame[2:10], "big"), 10
    assert len(frame) == offset + n
    return first & 0x0F, bool(second & 0x80), frame[offset:].decode()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_frames_use_the_right_length_encoding(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    opcode, masked, decoded = parse_frame(text_frame(text))
    assert opcode == 0x1 and not masked and decoded == text


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("socket closed")
        self.sent.append(message)


def texts(recorder: Recorder) -> list[str]:
    return [m["text"] for m in recorder.sent]


async def test_a_dead_socket_never_stops_a_broadcast() -> None:
    hub = LocalHub()
    recorders = [Recorder(), Recorder(fail=True), Recorder()]
    conns = [Connection("r", f"u{i}", "write", rec) for i, rec in enumerate(recorders)]
    for conn in conns:
        conn.state = ConnectionState.OPEN
        hub.add(conn)
    assert await hub.deliver("r", "e1", 1, exclude=conns[0].id) == 1
    assert texts(recorders[2]) == ["e1"] and texts(recorders[0]) == []
    assert conns[1].state is ConnectionState.CLOSED


async def test_events_before_the_welcome_are_held_and_filtered_by_seq() -> None:
    hub = LocalHub()
    rec = Recorder()
    conn = Connection("r", "u", "write", rec)
    hub.add(conn)
    await hub.deliver("r", "seq4", 4, None)
    await hub.deliver("r", "cursor", None, None)
    await hub.deliver("r", "seq6", 6, None)
    assert rec.sent == []
    await conn.open("welcome@5", 5, ["replay5"])
    assert texts(rec) == ["welcome@5", "replay5", "cursor", "seq6"]
    await hub.deliver("r", "seq7", 7, None)
    assert texts(rec)[-1] == "seq7"


def test_hub_membership() -> None:
    hub = LocalHub()
    a = Connection("r", "a", "write", Recorder())
    b = Connection("r", "b", "write", Recorder())
    hub.add(a)
    hub.add(b)
    assert hub.count("r") == 2 and hub.get("r", a.id) is a
    hub.remove(a)
    hub.remove(a)
    assert hub.connections("r") == (b,)
    hub.remove(b)
    assert hub.rooms() == []
