from django.contrib import admin
from django.urls import include, path

from config.health import healthz, readyz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    path("readyz", readyz),
    # Room tokens (rooms/token_api.py) and the REST API (rooms/api/).
    path("api/", include("rooms.token_api")),
    path("api/", include("rooms.api.urls")),
    # Demo pages and the JavaScript client (rooms/pages_urls.py).
    path("", include("rooms.pages_urls")),
    # Presence: /api/rooms/<room>/presence, /api/presence/sessions, /api/presence/online.
    path("api/", include("presence.urls")),
    # Ops dashboard (/ops/) and Prometheus /metrics (billing/urls.py).
    path("", include("billing.urls")),
]
