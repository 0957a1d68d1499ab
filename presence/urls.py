"""Presence routes, mounted under /api/ by config/urls.py (PROTOCOL.md section 6)."""

from django.urls import path, re_path

from presence.api import OnlineView, RoomPresenceView, SessionsView
from rooms.models import ROOM_SLUG_PATTERN

urlpatterns = [
    re_path(rf"^rooms/(?P<slug>{ROOM_SLUG_PATTERN})/presence$", RoomPresenceView.as_view(), name="room-presence"),
    path("presence/sessions", SessionsView.as_view(), name="presence-sessions"),
    path("presence/online", OnlineView.as_view(), name="presence-online"),
]
