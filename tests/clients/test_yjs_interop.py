"""Unmodified Yjs clients (yjs + y-websocket's WebsocketProvider, in Node) on a
Yjs document room: two of them edit concurrently and converge, across a server
restart, and a client arriving after the restart gets the whole document from
the server's stored snapshot.

The npm packages are pinned in tests/clients/yjs/package.json and its
lockfile; ``npm ci`` installs them into the gitignored node_modules on first
use.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pycrdt import Doc, Text

from tests.clients.conftest import require_tool
from tests.e2e.client import room_name
from tests.e2e.server import DormServer, bad_log_excerpts



YJS_DIR = Path(__file__).resolve().parent / "yjs"
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def node_modules() -> Path:
    node = require_tool("node", "node")
    npm = shutil.which("npm") or str(Path(node).with_name("npm"))
    modules = YJS_DIR / "node_modules"
    if not (modules / "y-websocket").is_dir():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=YJS_DIR, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return modules


class YPeer:
    """One Node Yjs client process, driven over stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._states: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, server: DormServer, room: str, user: str) -> YPeer:
        proc = await asyncio.create_subprocess_exec(
            "node", "peer.mjs", f"ws://127.0.0.1:{server.port}/ws", room, user,
            cwd=YJS_DIR, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc, user)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            event = orjson.loads(line)
            self.events.append(event)
            if event["event"] == "state":
                await self._states.put(event)

    async def command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        await self.proc.stdin.drain()

    async def state(self) -> dict[str, Any]:
        await self.command(cmd="state")
        return await asyncio.wait_for(self._states.get(), TIMEOUT)

    async def until(self, pred: Any, what: str) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            state = await self.state()
            if pred(state):
                return state
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.name}: {what} did not happen; last state {state}, events {self.events[-5:]}")
            await asyncio.sleep(0.1)

    def synced_count(self) -> int:
        return sum(1 for e in self.events if e["event"] == "synced")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.command(cmd="quit")
                await asyncio.wait_for(self.proc.wait(), 5)
            except Exception:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()


@pytest.fixture
async def peers(node_modules: Path) -> AsyncIterator[list[YPeer]]:
    started: list[YPeer] = []
    yield started
    for p in started:
        await p.stop()


def stored_document(server: DormServer, room: str) -> str:
    rows = server.query(
        "SELECT v.value FROM rooms_storedvalue v JOIN rooms_room r ON r.id = v.room_id WHERE r.slug = ? AND v.key = 'doc'",
        (room,),
    )
    assert rows, "no stored document"
    doc = Doc()
    doc.apply_update(base64.b64decode(orjson.loads(rows[0][0])))
    return str(doc.get("body", type=Text))


async def test_two_node_yjs_clients_converge_across_a_server_restart(fresh_server: DormServer, peers: list[YPeer]) -> None:
    room = room_name("doc")
    fresh_server.create_room(room, "yjs")
    a = await YPeer.start(fresh_server, room, "alice")
    b = await YPeer.start(fresh_server, room, "bob")
    peers += [a, b]
    await a.until(lambda s: s["synced"], "first sync")
    await b.until(lambda s: s["synced"], "first sync")
    # Each sees the other's awareness state (relayed by the server).
    await a.until(lambda s: s["peers"] == ["alice", "bob"], "awareness of bob")
    # Concurrent edits: both type at once, at the same position.
    for i in range(20):
        await asyncio.gather(a.command(cmd="insert", index=0, text=f"a{i};"), b.command(cmd="insert", index=0, text=f"b{i};"))
    sa = await a.until(lambda s: s["text"].count(";") == 40, "all 40 edits at alice")
    sb = await b.until(lambda s: s["text"] == sa["text"], "bob converging with alice")
    assert sorted(sb["text"].rstrip(";").split(";")) == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])

    # Restart: SIGTERM saves the document (the room sleeps), a new process
    # loads it; the providers reconnect on their own and resync.
    synced_before = (a.synced_count(), b.synced_count())
    fresh_server.stop()
    assert stored_document(fresh_server, room) == sa["text"]
    # Edits while the server is down stay in the clients and reach it later.
    await a.command(cmd="insert", index=0, text="offline-a;")
    fresh_server.start()
    await a.until(lambda s: a.synced_count() > synced_before[0], "alice resync after restart")
    await b.command(cmd="insert", index=0, text="after-b;")
    final = await a.until(lambda s: "after-b;" in s["text"], "bob's post-restart edit at alice")
    await b.until(lambda s: s["text"] == final["text"], "bob converging after restart")
    assert "offline-a;" in final["text"] and final["text"].count(";") == 42

    # A newcomer after everyone left gets the full document from the server.
    await a.stop()
    await b.stop()
    await asyncio.sleep(2.5)  # the debounced save of the last edits (2 s)
    c = await YPeer.start(fresh_server, room, "carol")
    peers.append(c)
    got = await c.until(lambda s: s["synced"] and s["text"], "newcomer sync")
    assert got["text"] == final["text"]
    log = fresh_server.log_text()
    assert "yjs doc saved" in log and "yjs frame refused" not in log
    assert not bad_log_excerpts(log), bad_log_excerpts(log)[:5]
