"""What a room says about access: private or public, size, anonymous viewers.

Read from the database at every connection (one indexed lookup on a
database thread), so making a room private takes effect for the next
connection. A room that does not exist yet is public with no size limit: if
auto-creation is on, the actor creates it that way.
"""

from __future__ import annotations

from channels.db import database_sync_to_async

from rooms.auth import RoomAccess
from rooms.models import Room


def load_access(slug: str) -> RoomAccess:
    row = Room.objects.filter(slug=slug).values_list("private", "max_connections", "settings").first()
    if row is None:
        return RoomAccess()
    private, max_connections, settings = row
    return RoomAccess.from_room(private, max_connections, settings)


db_load_access = database_sync_to_async(load_access)
