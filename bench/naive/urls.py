"""No HTTP views: the baseline serves WebSockets only."""

from __future__ import annotations

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
