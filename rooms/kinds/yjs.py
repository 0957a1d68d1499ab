"""A Yjs collaborative document, speaking y-protocols over binary frames.

An unmodified ``y-websocket`` ``WebsocketProvider`` syncs with it: the
provider connects to ``<serverUrl>/<roomname>``, so with
``serverUrl = "ws://host/ws"`` it lands on Dorm's ``/ws/<room>`` route (query
parameters such as ``userId`` or ``token`` go in the provider's ``params``).
A Yjs room's sockets are binary-only (``accepts_binary``): Dorm's JSON frames
(``welcome``, ``user_joined``, errors, the last ``close`` frame) are not sent
to them, because the provider would try to decode them as y-protocols.

The server side is what y-websocket's own server does, with the document in
pycrdt:

- on connect: send sync step 1 (the server's state vector) and every known
  awareness state;
- sync step 1 from a client: answer with sync step 2 (what it lacks);
- sync step 2 or an update from a client: apply it to the document and
  broadcast it to every other socket of the room as an update;
- awareness: relay to everyone else and remember the latest state of each
  client id; when a socket leaves, tell the others its client ids are gone;
- query awareness: answer with every known awareness state.

Storage: the document is not written per keystroke. After an update the room
schedules a save ``SAVE_DEBOUNCE_SECONDS`` later (one pending save at a time:
at most one write per window while people type); the save stores the whole
document as one compacted update (``Doc.get_update()``: merged, deletions
garbage-collected) in the room's storage under ``doc``. The room also saves
when it hibernates or the server shuts down (``on_sleep``). A new actor loads
that update in ``on_start``. A crash (not a clean shutdown) can lose at most
the last window of updates on the server; connected providers hold them too
and send them back in their sync step 2 when they reconnect.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

from pycrdt import (
    Doc,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)

from rooms.kinds.base import RoomKind

if TYPE_CHECKING:
    from rooms.runtime.actor import RoomContext
    from rooms.runtime.messages import Peer

log = logging.getLogger("dorm.rooms")

# Seconds between an edit and the save it schedules (edits meanwhile ride along).
SAVE_DEBOUNCE_SECONDS = 2.0
STORAGE_KEY = "doc"
# y-protocols message type 3: a client asks for every awareness state.
QUERY_AWARENESS = 3


def _read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    num = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        num |= (byte & 0x7F) << shift
        if byte < 0x80:
            return num, pos
        shift += 7


def _write_var_uint(num: int) -> bytes:
    out = bytearray()
    while num > 0x7F:
        out.append(0x80 | (num & 0x7F))
        num >>= 7
    out.append(num)
    return bytes(out)


def _awareness_entries(update: bytes) -> list[tuple[int, int, bytes]]:
    """``(client id, clock, state JSON)`` of an awareness update (y-protocols/awareness)."""
    count, pos = _read_var_uint(update, 0)
    entries = []
    for _ in range(count):
        client_id, pos = _read_var_uint(update, pos)
        clock, pos = _read_var_uint(update, pos)
        length, pos = _read_var_uint(update, pos)
        entries.append((client_id, clock, update[pos : pos + length]))
        pos += length
    return entries


def _awareness_update(entries: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(_write_var_uint(len(entries)))
    for client_id, clock, state in entries:
        out += _write_var_uint(client_id) + _write_var_uint(clock) + _write_var_uint(len(state)) + state
    return bytes(out)


class YDocState:
    """The live document and who is looking at it (never stored as events)."""

    def __init__(self) -> None:
        self.doc: Doc = Doc()
        # client id -> (clock, state JSON); the connection that sent it.
        self.awareness: dict[int, tuple[int, bytes]] = {}
        self.awareness_by_conn: dict[str, set[int]] = {}
        self.dirty = False
        self.save_pending = False


class YjsDocument(RoomKind):
    name = "yjs"
    messages = {}
    accepts_binary = True

    def initial_state(self) -> YDocState:
        return YDocState()

    async def on_start(self, room: RoomContext) -> None:
        stored = await room.storage.get(STORAGE_KEY)
        if stored:
            room.state.doc.apply_update(base64.b64decode(stored))

    async def on_connect(self, room: RoomContext, peer: Peer) -> None:
        state: YDocState = room.state
        await room.send_bytes(peer, create_sync_message(state.doc))
        if state.awareness:
            await room.send_bytes(peer, self._all_awareness(state))

    async def on_binary(self, room: RoomContext, peer: Peer, data: bytes) -> None:
        try:
            await self._on_message(room, peer, data)
        except (ValueError, IndexError, RuntimeError) as exc:
            # A malformed y-protocols message: dropped, the room goes on
            # (metadata only in the log, never the bytes).
            log.info("yjs frame refused room=%s conn=%s bytes=%d error=%s", room.slug, peer.id, len(data), type(exc).__name__)

    async def _on_message(self, room: RoomContext, peer: Peer, data: bytes) -> None:
        state: YDocState = room.state
        if not data:
            return
        if data[0] == YMessageType.SYNC and len(data) >= 2:
            if data[1] == YSyncMessageType.SYNC_STEP1:
                reply = handle_sync_message(data[1:], state.doc)
                if reply is not None:
                    await room.send_bytes(peer, reply)
                return
            if data[1] in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
                update = read_message(data[2:])
                before = state.doc.get_state()
                state.doc.apply_update(update)
                if state.doc.get_state() == before:
                    return  # nothing new (a resync of what the server has)
                await room.broadcast_bytes(create_update_message(update), exclude=peer.id)
                self._schedule_save(room)
            return
        if data[0] == YMessageType.AWARENESS:
            update = read_message(data[1:])
            mine = state.awareness_by_conn.setdefault(peer.id, set())
            for client_id, clock, client_state in _awareness_entries(update):
                state.awareness[client_id] = (clock, client_state)
                mine.add(client_id)
            await room.broadcast_bytes(data, exclude=peer.id)
            return
        if data[0] == QUERY_AWARENESS and state.awareness:
            await room.send_bytes(peer, self._all_awareness(state))

    async def on_close(self, room: RoomContext, peer: Peer) -> None:
        state: YDocState = room.state
        gone = state.awareness_by_conn.pop(peer.id, set())
        entries = []
        for client_id in gone:
            clock, _ = state.awareness.pop(client_id, (0, b""))
            entries.append((client_id, clock + 1, b"null"))
        if entries:
            await room.broadcast_bytes(create_awareness_message(_awareness_update(entries)))

    async def on_sleep(self, room: RoomContext) -> None:
        self._save(room)

    @staticmethod
    def _all_awareness(state: YDocState) -> bytes:
        entries = [(cid, clock, s) for cid, (clock, s) in state.awareness.items()]
        return create_awareness_message(_awareness_update(entries))

    def _schedule_save(self, room: RoomContext) -> None:
        state: YDocState = room.state
        state.dirty = True
        if not state.save_pending:
            state.save_pending = True
            room.after(SAVE_DEBOUNCE_SECONDS, self._save)

    def _save(self, room: RoomContext) -> None:
        state: YDocState = room.state
        state.save_pending = False
        if not state.dirty:
            return
        state.dirty = False
        update = state.doc.get_update()
        room.storage.put(STORAGE_KEY, base64.b64encode(update).decode())
        log.info("yjs doc saved room=%s bytes=%d", room.slug, len(update))

    def snapshot(self, state: YDocState) -> dict[str, Any]:
        # For JSON readers (REST state): the document's size, not its content.
        return {"updateBytes": len(state.doc.get_update())}

    def dump_state(self, state: YDocState) -> Any:
        return None  # the document lives in storage, not in event snapshots

    def load_state(self, data: Any) -> YDocState:
        return YDocState()
