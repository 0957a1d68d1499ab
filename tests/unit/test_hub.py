"""Fan-out: framing, direct writes, the welcome buffer and dead sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


async def test_replies_before_the_welcome_wait_for_it_in_order() -> None:
    """PROTOCOL.md: the first frame is the welcome, even for a client that
    pings (or sends a bad frame) right behind its handshake."""
    hub = LocalHub()
    rec = Recorder()
    conn = Connection("r", "u", "write", rec)
    hub.add(conn)
    await conn.reply("pong")
    await hub.deliver("r", "seq6", 6, None)
    await conn.error("invalid_json")
    assert rec.sent == []
    await conn.open("welcome@5", 5, [])
    assert texts(rec)[:3] == ["welcome@5", "pong", "seq6"] and '"invalid_json"' in texts(rec)[3]
    await conn.reply("ack")
    assert texts(rec)[-1] == "ack"


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


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "remove", "read", "send"]), st.sampled_from("rs"), st.integers(0, 5)),
        max_size=60,
    )
)
def test_membership_after_any_joins_leaves_reads_and_sends(ops: list[tuple[str, str, int]]) -> None:
    """Whatever the order of joins, leaves, reads and broadcasts, a read and
    a broadcast see exactly the current members in join order, and a tuple
    read earlier never changes."""
    hub = LocalHub()
    model: dict[str, dict[str, Connection]] = {"r": {}, "s": {}}
    sockets: dict[str, Socket] = {}
    held: list[tuple[tuple[Connection, ...], tuple[Connection, ...]]] = []
    for op, room, n in ops:
        key = f"{room}{n}"
        if op == "add" and key not in model[room]:
            sockets[key] = Socket()
            conn = Connection(room, key, "s", sockets[key].asgi)
            conn.write_frame = sockets[key].write
            conn.state = ConnectionState.OPEN
            hub.add(conn)
            model[room][key] = conn
        elif op == "remove" and key in model[room]:
            hub.remove(model[room].pop(key))
            hub.remove(Connection(room, key, "s", sockets[key].asgi))  # not in the hub: ignored
        elif op == "read":
            members = hub.connections(room)
            held.append((members, tuple(members)))
        elif op == "send":
            delivered, slow = hub.deliver_now(room, f"e{len(held)}", None, None)
            assert (delivered, slow) == (len(model[room]), [])
        for r in "rs":
            assert hub.connections(r) == tuple(model[r].values())
            assert hub.count(r) == len(model[r])
    assert sorted(hub.rooms()) == sorted(r for r in "rs" if model[r])
    assert all(members == copy for members, copy in held)


class Socket:
    """One socket's bytes in order, whichever path wrote them: the ASGI
    ``send`` (``asgi``) or a direct frame writer (``write``)."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.result = 1  # SENT

    async def asgi(self, message: dict[str, Any]) -> None:
        self.frames.append(message["text"])

    def write(self, frame: bytes) -> int:
        from rooms.runtime.direct_write import NOT_WRITTEN

        if self.result != NOT_WRITTEN:
            self.frames.append(parse_frame(frame)[2])
        return self.result


async def test_replies_take_the_direct_writer_in_order_with_events() -> None:
    from rooms.runtime.direct_write import NOT_WRITTEN, QUEUED, SENT

    hub = LocalHub()
    sock = Socket()
    conn = Connection("r", "u", "write", sock.asgi)
    conn.write_frame = sock.write
    hub.add(conn)
    await conn.reply("before welcome")  # not open yet: held, then the ASGI send after the welcome
    await conn.open("welcome", 0, [])
    await hub.deliver("r", "e1", 1, None)
    hub.written.clear()
    await conn.reply("ack1")
    assert conn not in hub.written  # the socket took it all: nothing to watch
    sock.result = QUEUED
    await conn.reply("ack2")
    assert conn in hub.written  # bytes may be queued: the backpressure watch looks
    sock.result = NOT_WRITTEN  # the writer declines (socket closing): the ASGI send takes it
    await conn.reply("ack3")
    sock.result = SENT
    await hub.deliver("r", "e2", 2, None)
    assert sock.frames == ["welcome", "before welcome", "e1", "ack1", "ack2", "ack3", "e2"]
    conn.lost()
    await conn.reply("after close")
    assert sock.frames[-1] == "e2"
