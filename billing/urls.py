from django.urls import path

from billing import views

urlpatterns = [
    path("ops/", views.ops_dashboard, name="ops-dashboard"),
    path("ops/data", views.ops_data, name="ops-data"),
    path("ops/static/<path:path>", views.ops_static, name="ops-static"),
    path("metrics", views.metrics, name="metrics"),
]
