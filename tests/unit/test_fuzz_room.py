"""Random frames and payloads at a live room (hypothesis).

Whatever one client sends, with whatever token scope: the room keeps serving
another client, every stored event is valid for its kind (gapless seq, known
durable type, payload passing the kind's schema and size bound, a sender
allowed to send it), the other client sees exactly the stored events, and no
close code 1011 is ever sent (1008 and 1009 are the only closes allowed).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.asgi import application
from rooms import limits, tokens
from rooms.kinds.whiteboard import Whiteboard
from rooms.models import Event
from rooms.runtime.connection import SCOPE_RANK
from rooms.runtime.registry import reset_runtime

pytestmark = pytest.mark.django_db(transaction=True)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
message_types = st.sampled_from(
    ["draw", "erase", "undo", "redo", "clear", "cursor", "presence", "ping", "heartbeat", "welcome", "ack", "Draw", ""]
) | st.text(max_size=12)
envelopes = st.fixed_dictionaries(
    {"type": message_types},
    optional={
        "id": st.text(max_size=70) | st.integers() | st.none(),
        "payload": json_values | st.fixed_dictionaries({"seq": st.integers(-3, 40)}),
    },
)
nasty = st.sampled_from(
    [
        '{"type":"draw","payload":{"x":NaN}}',
        '{"type":"draw","payload":{"x":Infinity}}',
        '{"type":"draw","payload":{"x":1e400}}',
        '{"type":"draw","payload":{"x":1e300}}',
        '{"type":"draw","payload":' + "[" * 2000 + "]" * 2000 + "}",
        '{"type":"draw","payload":{"s":"' + "x" * 70_000 + '"}}',
        '{"type":"draw","payload":{"s":"' + "x" * (1 << 20) + '"}}',
        '{"type":"draw","type":"clear"}',
        '{"type":"draw","payload":{"\\ud800":1}}',
        "[]",
        "null",
        "",
        "\x00",
    ]
)
frames = st.lists(
    st.one_of(
        envelopes.map(lambda d: ("text", json.dumps(d))),
        json_values.map(lambda v: ("text", json.dumps(v))),
        st.text(max_size=100).map(lambda t: ("text", t)),
        nasty.map(lambda t: ("text", t)),
        st.binary(max_size=64).map(lambda b: ("bytes", b)),
    ),
    max_size=25,
)

_rooms = itertools.count()
WHITEBOARD = Whiteboard.messages


def _valid_stored(row: tuple[int, str, str, str], scopes: dict[str, str]) -> None:
    seq, type_, user_id, payload = row
    mtype = WHITEBOARD.get(type_)
    assert mtype is not None and mtype.durable, f"stored a non-durable or unknown type {type_!r}"
    assert SCOPE_RANK[scopes[user_id]] >= SCOPE_RANK[mtype.scope], f"{user_id} stored {type_} without the scope"
    value = orjson.loads(payload) if payload else None
    mtype.schema.validate(value)
    assert len(payload.encode()) <= mtype.max_payload_bytes


async def _drain(ws: WebsocketCommunicator) -> list[dict[str, Any]]:
    out = []
    while not await ws.receive_nothing(0.05):
        out.append(await ws.receive_output(1))
    return out


async def _scenario(room: str, scope: str, sent: list[tuple[str, Any]]) -> None:
    await reset_runtime()
    await limits.reset()
    token, _ = tokens.issue("fuzz", room, scope)
    fuzzer = WebsocketCommunicator(application, f"/ws/{room}?token={token}")
    observer = WebsocketCommunicator(application, f"/ws/{room}?userId=obs")
    try:
        assert (await fuzzer.connect())[0] and (await observer.connect())[0]
        assert orjson.loads(await fuzzer.receive_from(2))["type"] == "welcome"
        assert orjson.loads(await observer.receive_from(2))["type"] == "welcome"
        for kind, data in sent:
            # send_input, not send_to: empty frames are legal on the wire.
            await fuzzer.send_input({"type": "websocket.receive", kind: data})
        await asyncio.sleep(0.02)
        # The room still serves: a valid message is stored and acknowledged.
        await observer.send_to(text_data='{"type":"draw","id":"probe","payload":{"x":1}}')
        observed = []
        while True:
            output = await observer.receive_output(2)
            observed.append(output)
            if output["type"] == "websocket.send" and '"id":"probe"' in output.get("text", ""):
                break
        probe = orjson.loads(observed[-1]["text"])
        assert probe["type"] == "ack", probe
        fuzzed = await _drain(fuzzer)
        observed += await _drain(observer)
    finally:
        await fuzzer.disconnect()
        await observer.disconnect()
        await reset_runtime()
        await limits.reset()

    for output in fuzzed + observed:
        if output["type"] == "websocket.close":
            assert output["code"] in (1008, 1009), output
        elif output.get("text", "").startswith('{"type":"close"'):
            assert orjson.loads(output["text"])["code"] in (1008, 1009), output

    rows = await database_sync_to_async(
        lambda: list(Event.objects.filter(room__slug=room).order_by("seq").values_list("seq", "type", "user_id", "payload"))
    )()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[-1][0] == probe["seq"] and rows[-1][2] == "obs"
    for row in rows:
        _valid_stored(row, {"fuzz": scope, "obs": "write"})
    # The observer saw exactly the fuzzer's stored events, in order.
    seen = [
        frame["seq"]
        for output in observed
        if output["type"] == "websocket.send" and "text" in output
        for frame in [orjson.loads(output["text"])]
        if "seq" in frame and frame["type"] != "welcome" and frame["type"] != "ack"
    ]
    assert seen == [r[0] for r in rows if r[2] == "fuzz"]
    await database_sync_to_async(connections.close_all)()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scope=st.sampled_from(["read", "write", "host"]), sent=frames)
def test_random_frames_never_break_a_room_or_store_invalid_data(scope: str, sent: list[tuple[str, Any]]) -> None:
    asyncio.run(_scenario(f"fuzz-{next(_rooms)}", scope, sent))
