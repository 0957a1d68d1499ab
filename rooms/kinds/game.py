"""An authoritative game loop: the server moves every player at a fixed rate.

Room settings (all optional)::

    {"hz": 30, "width": 1000, "height": 1000, "speed": 300}

- ``hz`` (20-60): ticks per second. The loop is an in-actor timer
  (``room.every``), so a tick runs between frames like any other item: it
  reads the inputs the actor took since the last tick, with no locks.
- A player is a connected user (``on_connect`` / ``on_close``); the loop runs
  only while there is one, and keeps the room awake meanwhile
  (``room.stay_awake``). When the last player leaves, the loop stops and the
  world (positions, tick count) is stored in the room's storage; the next
  player's connect loads it and restarts the loop.
- ``input`` is ephemeral and not relayed: ``{"dx": -1|0|1, "dy": -1|0|1}``,
  the direction the sender holds from now on. The schema bounds it, ``check``
  refuses it from someone who is not playing. Other clients never see inputs,
  only the result.
- Every tick broadcasts one compact ephemeral frame to the room::

      {"type": "tick", "payload": {"t": 1234, "p": [["u1", 10, 20], ["u2", 300, 40]]}, ...}

  ``t`` the tick number, ``p`` every player's ``[userId, x, y]`` (integers).

Inputs are not stored: a game's log would be its ticks, 30-60 rows a second
for nothing a rejoining player needs. What is stored is the world when the
last player leaves, when the room hibernates and when the server stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rooms.kinds.base import Incoming, Reject, RoomKind, ephemeral
from rooms.schema import Int, Obj

if TYPE_CHECKING:
    from rooms.runtime.actor import RoomContext
    from rooms.runtime.messages import Peer
    from rooms.runtime.timers import Timer

log = logging.getLogger("dorm.rooms")

MIN_HZ = 20
MAX_HZ = 60
DEFAULT_HZ = 30
STORAGE_KEY = "world"


@dataclass(slots=True)
class Player:
    x: float
    y: float
    dx: int = 0
    dy: int = 0
    connections: set[str] = field(default_factory=set)


@dataclass(slots=True)
class World:
    tick: int = 0
    players: dict[str, Player] = field(default_factory=dict)
    # Where players who left were (they come back there).
    parked: dict[str, tuple[float, float]] = field(default_factory=dict)
    loop: Timer | None = None


class GameTick(RoomKind):
    name = "game"
    messages = {
        "input": ephemeral(Obj({"dx": Int(-1, 1), "dy": Int(-1, 1)}), max_payload_bytes=64, relay=False),
    }

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.check_settings(self.settings)
        self.hz = int(self.settings.get("hz", DEFAULT_HZ))
        self.width = float(self.settings.get("width", 1000))
        self.height = float(self.settings.get("height", 1000))
        self.step = float(self.settings.get("speed", 300)) / self.hz

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        hz = settings.get("hz", DEFAULT_HZ)
        if type(hz) is not int or not MIN_HZ <= hz <= MAX_HZ:
            raise ValueError(f"hz: an integer {MIN_HZ}-{MAX_HZ}")
        for name in ("width", "height", "speed"):
            value = settings.get(name, 1)
            if type(value) not in (int, float) or not 0 < value <= 1e6:
                raise ValueError(f"{name}: a number in (0, 1e6]")

    def initial_state(self) -> World:
        return World()

    async def on_start(self, room: RoomContext) -> None:
        stored = await room.storage.get(STORAGE_KEY)
        if stored:
            room.state.tick = stored["tick"]
            room.state.parked = {u: (p[0], p[1]) for u, p in stored["players"].items()}

    def check(self, state: World, message: Incoming) -> None:
        if message.user_id not in state.players:
            raise Reject("input: you are not in the game", code="not_playing")

    async def on_connect(self, room: RoomContext, peer: Peer) -> None:
        world: World = room.state
        if peer.scope == "read":
            return  # spectators watch the ticks
        player = world.players.get(peer.user_id)
        if player is None:
            x, y = world.parked.pop(peer.user_id, (self.width / 2, self.height / 2))
            player = world.players[peer.user_id] = Player(x, y)
        player.connections.add(peer.id)
        if world.loop is None:
            world.loop = room.every(1 / self.hz, self._tick)
            log.info("game loop started room=%s hz=%d", room.slug, self.hz)

    async def on_message(self, room: RoomContext, message: Incoming, seq: int | None) -> None:
        player = room.state.players.get(message.user_id)
        if player is not None:  # applied at the next tick
            player.dx, player.dy = message.payload["dx"], message.payload["dy"]

    async def on_close(self, room: RoomContext, peer: Peer) -> None:
        world: World = room.state
        player = world.players.get(peer.user_id)
        if player is None:
            return
        player.connections.discard(peer.id)
        if not player.connections:
            del world.players[peer.user_id]
            world.parked[peer.user_id] = (player.x, player.y)
        if not world.players and world.loop is not None:
            world.loop.cancel()
            world.loop = None
            self._save(room)
            log.info("game loop stopped room=%s tick=%d", room.slug, world.tick)

    async def on_sleep(self, room: RoomContext) -> None:
        self._save(room)

    async def _tick(self, room: RoomContext) -> None:
        world: World = room.state
        world.tick += 1
        step, width, height = self.step, self.width, self.height
        positions = []
        for user_id, p in world.players.items():
            if p.dx or p.dy:
                p.x = min(width, max(0.0, p.x + p.dx * step))
                p.y = min(height, max(0.0, p.y + p.dy * step))
            positions.append([user_id, round(p.x), round(p.y)])
        await room.broadcast("tick", {"t": world.tick, "p": positions})
        # Players are connected: an idle game must not hibernate under them.
        room.stay_awake(1.0)

    def _save(self, room: RoomContext) -> None:
        world: World = room.state
        everyone = {**world.parked, **{u: (p.x, p.y) for u, p in world.players.items()}}
        room.storage.put(STORAGE_KEY, {"tick": world.tick, "players": {u: [x, y] for u, (x, y) in everyone.items()}})

    def snapshot(self, state: World) -> dict[str, Any]:
        return {
            "hz": self.hz,
            "t": state.tick,
            "p": [[u, round(p.x), round(p.y)] for u, p in state.players.items()],
            "running": state.loop is not None,
        }

    def dump_state(self, state: World) -> Any:
        return None  # no durable events: the world lives in storage

    def load_state(self, data: Any) -> World:
        return World()
