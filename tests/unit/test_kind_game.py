"""The game tick kind: an authoritative loop only while players are connected."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async

from rooms import tokens
from rooms.kinds.game import GameTick
from rooms.models import Room, StoredValue

pytestmark = pytest.mark.django_db(transaction=True)

SETTINGS = {"hz": 50, "width": 100, "height": 100, "speed": 100}


async def ticks(client: Any, seconds: float, others: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The tick payloads received within ``seconds``; other frames go to ``others``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    got = []
    while loop.time() < end:
        # Ticks come every 1/hz s while the loop runs (a timeout here would
        # also stop the communicator's application).
        frame = await client.recv(2.0)
        if frame["type"] == "tick":
            got.append(frame["payload"])
        elif others is not None:
            others.append(frame)
    return got


@database_sync_to_async
def stored_world(room: str) -> str | None:
    return StoredValue.objects.filter(room__slug=room, key="world").values_list("value", flat=True).first()


@pytest.mark.parametrize("bad", [{"hz": 10}, {"hz": 61}, {"hz": 30.5}, {"speed": 0}])
def test_rate_and_world_bounds_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GameTick.check_settings(bad)


async def test_the_loop_moves_players_from_validated_inputs_and_stops_when_they_leave(connect: Any) -> None:
    await database_sync_to_async(Room.objects.create)(slug="arena", kind="game", settings=SETTINGS)
    a = await connect("arena", userId="a")
    b = await connect("arena", userId="b")
    assert a.welcome["state"]["hz"] == 50
    first = await ticks(a, 1.0)
    # 50 Hz on a busy machine: a fixed-rate timer skips late ticks, never bursts.
    assert 25 <= len(first) <= 55, len(first)
    numbers = [t["t"] for t in first]
    assert numbers == sorted(set(numbers))
    assert sorted(p[0] for p in first[-1]["p"]) == ["a", "b"]
    # Out-of-range input is refused; a good one is acked but never relayed.
    await a.send("input", {"dx": 2, "dy": 0}, id="bad")
    assert (await a.recv_type("error"))["reason"] == "invalid_message"
    await a.send("input", {"dx": 1, "dy": 0}, id="go")
    await a.recv_type("ack")
    seen_by_b: list[dict[str, Any]] = []
    later = await ticks(b, 0.5, seen_by_b)
    assert [f["type"] for f in seen_by_b if f["type"] == "input"] == []
    xs = [dict((p[0], p[1]) for p in t["p"])["a"] for t in later]
    assert xs[-1] > xs[0] and xs[-1] <= 100  # moving right, clamped to the world
    # A spectator (read scope) watches but does not play.
    watch = await connect("arena", token=tokens.issue("w", "arena", "read")[0])
    await watch.send("input", {"dx": 0, "dy": 1}, id="w1")
    assert (await watch.recv_type("error"))["reason"] == "forbidden"
    await watch.close()
    # The last player leaves: the loop stops and the world is stored.
    await b.close()
    await a.close()
    await asyncio.sleep(0.2)
    stored = await stored_world("arena")
    assert stored is not None
    world = orjson.loads(stored)
    ax = world["players"]["a"][0]
    assert 50 < ax <= 100 and world["players"]["b"] == [50, 50] and world["tick"] >= numbers[-1]
    # Back again: the loop restarts from the stored world.
    c = await connect("arena", userId="a")
    assert c.welcome["state"]["t"] >= numbers[-1]
    resumed = await ticks(c, 0.3)
    assert resumed and resumed[0]["t"] > numbers[-1]
    assert resumed[0]["p"] == [["a", round(ax), 50]]  # where a left off (its input ended with it)
