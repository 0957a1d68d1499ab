"""What happened in a room, for other apps (webhooks, metering) to react to.

Sent by the room's actor, on its event loop, after the fact (durable events:
after their commit). Receivers must return at once: anything slow (database,
network) is handed to a thread or a task queue, never done in the actor.
All are sent with ``sender=None`` and keyword arguments only.
"""

from __future__ import annotations

from django.dispatch import Signal

# room, user_id: the user's first connection to the room opened.
user_joined = Signal()
# room, user_id: the user's last connection to the room closed.
user_left = Signal()
# room: the room had nobody in it and now has someone.
room_occupied = Signal()
# room: the last connection of the room closed.
room_vacated = Signal()
# room, first_seq, last_seq: durable events committed (one group commit).
events_durable = Signal()
