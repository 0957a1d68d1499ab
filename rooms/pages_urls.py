"""URLs of the demo pages and of the JavaScript client (mounted at the root)."""

from django.urls import path, re_path

from rooms import pages

urlpatterns = [
    path("", pages.index, name="dorm-index"),
    re_path(r"^rooms/(?P<slug>[A-Za-z0-9_-]{1,64})/$", pages.room_page, name="dorm-room-page"),
    path("static/dorm/dorm.js", pages.client_js, name="dorm-client-js"),
]
