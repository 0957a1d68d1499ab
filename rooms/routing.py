from django.urls import re_path

from rooms.consumer import RoomConsumer

# Any room id reaches the consumer, which refuses bad ones with 4400 after
# accept (PROTOCOL.md section 1) instead of a bare HTTP 404 at handshake.
websocket_urlpatterns = [
    re_path(r"^ws/(?P<room>[^/?]*)/?$", RoomConsumer.as_asgi()),
]
