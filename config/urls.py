from django.contrib import admin
from django.urls import include, path

from config.health import healthz, readyz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    path("readyz", readyz),
    # Room tokens (rooms/token_api.py); the REST API mounts its own include here too.
    path("api/", include("rooms.token_api")),
    # Ops dashboard (/ops/) and Prometheus /metrics (billing/urls.py).
    path("", include("billing.urls")),
]
