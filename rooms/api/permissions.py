"""Who sees and writes which rooms.

- staff: every room, and the staff-only actions (restore);
- any other account (an app backend's API user): lists and writes the rooms
  it created (``Room.owner``), and reads public rooms' history and state;
- a private room of someone else does not exist as far as the caller can
  tell (404, not 403, so room names do not leak).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from rooms.models import Room


def listed_rooms(user: Any) -> QuerySet[Room]:
    rooms = Room.objects.all()
    return rooms if user.is_staff else rooms.filter(owner=user)


def visible_rooms(user: Any) -> QuerySet[Room]:
    rooms = Room.objects.all()
    return rooms if user.is_staff else rooms.filter(Q(owner=user) | Q(private=False))


def may_write(user: Any, room: Room) -> bool:
    return bool(user.is_staff or (room.owner_id is not None and room.owner_id == user.pk))


class IsStaff(BasePermission):
    message = "staff only"

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_staff)
