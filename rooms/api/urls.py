"""URLs of the REST API, mounted under /api/ (config/urls.py)."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from rooms.api import views

app_name = "api"

urlpatterns = [
    path("rooms/", views.RoomList.as_view(), name="rooms"),
    # Without the slash too: CommonMiddleware would answer a POST to it with a
    # RuntimeError (DEBUG) or a redirect that drops the body.
    path("rooms", views.RoomListNoSlash.as_view()),
    path("rooms/<str:slug>/", views.RoomDetail.as_view(), name="room"),
    path("rooms/<str:slug>/history", views.History.as_view(), name="history"),
    path("rooms/<str:slug>/state", views.State.as_view(), name="state"),
    path("rooms/<str:slug>/messages", views.Messages.as_view(), name="messages"),
    path("rooms/<str:slug>/restore", views.Restore.as_view(), name="restore"),
    # The webhooks app owns its endpoints; they live under the same /api/.
    path("", include("webhooks.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
]
