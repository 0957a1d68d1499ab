"""What a room says about access: private or public, size, anonymous viewers.

Read from the database at every connection (one indexed lookup on a
database thread), so making a room private takes effect for the next
connection. A room that does not exist yet is public with no size limit: if
auto-creation is on, the actor creates it that way.
"""

from __future__ import annotations

from channels.db import database_sync_to_async

from rooms.auth import RoomAccess
from rooms.conf import dorm_settings
from rooms.models import Room


def load_access(slug: str) -> RoomAccess:
    row = Room.objects.filter(slug=slug).values_list("private", "max_connections", "settings", "kind").first()
    if row is None:
        # The kind the actor would create it with (and if it will not create
        # it, the join is refused with 4404 before any frame counts).
        return RoomAccess(kind=str(dorm_settings.DEFAULT_KIND))
    private, max_connections, settings, kind = row
    return RoomAccess.from_room(private, max_connections, settings, kind)


db_load_access = database_sync_to_async(load_access)
