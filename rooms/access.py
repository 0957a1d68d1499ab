"""What a room says about access: private or public, size, anonymous viewers.

Read at every connection, from a per-process cache in front of one indexed
lookup on the database thread (at hundreds of connections per second into
the same rooms the query and its thread hop were a tenth of the handshake).

Staleness bound (docs/security.md, "Room access cache"):

- a change saved through this process (REST API, admin, the actor creating a
  room, anything going through ``Room.save()``/``delete()``) drops the room's
  entry at once (``post_save``/``post_delete``, and again when the
  transaction commits), so the next connection reads the new row;
- a change made anywhere else (another server process in the distributed
  mode, a management command, raw SQL) is seen within
  ``DORM["ROOM_ACCESS_CACHE_SECONDS"]`` (5 s by default; 0 turns the cache
  off and every connection queries the database).

Only what a handshake decides on is cached (private, max_connections, the
anonymous-read setting, kind), never a credential: tokens are checked on
every connection. A room that does not exist yet is public with no size
limit: if auto-creation is on, the actor creates it that way (and that save
drops the cached "not found" entry).
"""

from __future__ import annotations

import threading
import time

from channels.db import database_sync_to_async
from django.core.signals import setting_changed
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from rooms.auth import RoomAccess
from rooms.conf import dorm_settings
from rooms.models import Room

# Rooms whose access is kept; past it the oldest entries go first.
MAX_ENTRIES = 10_000


def load_access(slug: str) -> RoomAccess:
    row = Room.objects.filter(slug=slug).values_list("private", "max_connections", "settings", "kind").first()
    if row is None:
        # The kind the actor would create it with (and if it will not create
        # it, the join is refused with 4404 before any frame counts).
        return RoomAccess(kind=str(dorm_settings.DEFAULT_KIND))
    private, max_connections, settings, kind = row
    return RoomAccess.from_room(private, max_connections, settings, kind)


_db_load_access = database_sync_to_async(load_access)


class AccessCache:
    """slug -> (RoomAccess, monotonic expiry), with explicit invalidation.

    Read on the event loop; invalidated from whatever thread saves a room.
    A load that was in flight while its room was invalidated is not stored
    (the generation check), so an invalidation is never undone by a read of
    the old row that started before it.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[RoomAccess, float]] = {}
        self._generation = 0
        self._lock = threading.Lock()
        # For tests and the benchmark notes.
        self.hits = 0
        self.misses = 0

    def get(self, slug: str) -> RoomAccess | None:
        entry = self._entries.get(slug)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            self._entries.pop(slug, None)
            return None
        return entry[0]

    def generation(self) -> int:
        return self._generation

    def put(self, slug: str, access: RoomAccess, generation: int, ttl: float) -> None:
        with self._lock:
            if generation != self._generation:
                return  # invalidated while loading: the row read may be the old one
            entries = self._entries
            entries.pop(slug, None)  # re-inserted last: the oldest go first
            entries[slug] = (access, time.monotonic() + ttl)
            while len(entries) > MAX_ENTRIES:
                del entries[next(iter(entries))]

    def invalidate(self, slug: str | None = None) -> None:
        """Forget one room (``None``: every room)."""
        with self._lock:
            self._generation += 1
            if slug is None:
                self._entries.clear()
            else:
                self._entries.pop(slug, None)


cache = AccessCache()


async def db_load_access(slug: str) -> RoomAccess:
    """The room's access, from the cache or the database (then cached)."""
    ttl = float(dorm_settings.ROOM_ACCESS_CACHE_SECONDS or 0)
    if ttl <= 0:
        return await _db_load_access(slug)
    access = cache.get(slug)
    if access is not None:
        cache.hits += 1
        return access
    cache.misses += 1
    generation = cache.generation()
    access = await _db_load_access(slug)
    cache.put(slug, access, generation, ttl)
    return access


def _room_changed(sender: type[Room], instance: Room, **kwargs: object) -> None:
    slug = instance.slug
    cache.invalidate(slug)
    # Again after the commit: a connection that read the row between this
    # signal and the commit (another database connection) cached the old
    # values; this drops them.
    transaction.on_commit(lambda: cache.invalidate(slug), using=kwargs.get("using"))  # type: ignore[arg-type]


post_save.connect(_room_changed, sender=Room, dispatch_uid="rooms.access.room_saved")
post_delete.connect(_room_changed, sender=Room, dispatch_uid="rooms.access.room_deleted")


def _settings_changed(*, setting: str, **kwargs: object) -> None:
    if setting == "DORM":  # DEFAULT_KIND is in the "not found" entries
        cache.invalidate()


setting_changed.connect(_settings_changed, dispatch_uid="rooms.access.settings_changed")
