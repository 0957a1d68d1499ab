"""The ops dashboard (/ops/, staff only) and /metrics (staff or a bearer token)."""

from __future__ import annotations

import hmac
from pathlib import Path

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_control, never_cache
from django.views.static import serve

from billing import stats
from billing.conf import billing_settings


@never_cache
@staff_member_required
def ops_dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "billing/ops.html", {"data": stats.dashboard(), "title": "Dorm operations"})


@never_cache
@staff_member_required
def ops_data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(stats.dashboard())


def _token_ok(request: HttpRequest) -> bool:
    token = str(billing_settings.METRICS_TOKEN or "")
    header = request.headers.get("Authorization", "")
    if not token or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].encode(), token.encode())


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    user = getattr(request, "user", None)
    if not (_token_ok(request) or (user is not None and user.is_active and user.is_staff)):
        response = HttpResponse("staff session or bearer token required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="dorm-metrics"'
        return response
    from prometheus_client import CONTENT_TYPE_LATEST

    from billing.metrics import exposition

    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


STATIC_ROOT = Path(__file__).resolve().parent / "static" / "billing"


@cache_control(max_age=3600)
def ops_static(request: HttpRequest, path: str) -> HttpResponse:
    """The dashboard's own CSS/JS and the vendored uPlot, served by Dorm itself:
    daphne serves no static files, and the charts must not come from a CDN.
    ``serve`` refuses paths outside the directory."""
    return serve(request, path, document_root=str(STATIC_ROOT))
