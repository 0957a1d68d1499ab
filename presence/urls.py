"""Presence routes, mounted under /api/ by config/urls.py (PROTOCOL.md section 6)."""

from django.urls import path

from presence.api import OnlineView, RoomPresenceView, SessionsView

urlpatterns = [
    # Any slug reaches the view, which answers a malformed one with a JSON 404
    # (a URL pattern would give Django's HTML 404 page).
    path("rooms/<str:slug>/presence", RoomPresenceView.as_view(), name="room-presence"),
    path("presence/sessions", SessionsView.as_view(), name="presence-sessions"),
    path("presence/online", OnlineView.as_view(), name="presence-online"),
]
