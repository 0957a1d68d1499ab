"""The admin, organised around rooms: the rooms list with live connections,
messages per minute, latency and cost columns; a room page with its state,
connections (disconnect one, close all), recent history, 24 h charts and
budget; and the usage, price and budget tables.

The room admin of ``rooms/admin.py`` is replaced by a subclass here (billing
is installed after rooms), so the rooms app keeps no dependency on billing.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.db.models import OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce, Greatest
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone

from billing import budgets, costs, histogram, stats
from billing.meter import meter
from billing.models import Budget, ConnectionSpan, LatencyBucket, OpsCount, Price, RoomOwner, UsageMinute
from rooms.admin import RoomAdmin
from rooms.models import Event, Room, Snapshot

STAFF_CLOSE_CODE = 1008  # policy: do not retry at once (PROTOCOL.md section 1)


def _runtime() -> Any:
    """This process's runtime if it runs (never started from the admin)."""
    from rooms.runtime import registry

    return registry._runtime


class BillingRoomAdmin(RoomAdmin):
    list_display = (
        "slug",
        "kind",
        "live_connections",
        "messages_per_minute",
        "p50_ms",
        "p99_ms",
        "cost_month",
        "do_cost_month",
        "budget_status",
    )
    change_form_template = "admin/billing/room/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Room]:
        now = timezone.now()
        lm = stats.last_minute(now)
        usage = UsageMinute.objects.filter(room=OuterRef("pk"))
        level = ConnectionSpan.objects.filter(Q(until__isnull=True) | Q(until__gt=lm), room=OuterRef("pk"), since__lte=lm)
        month = usage.filter(minute__gte=costs.month_start(now)).values("room")
        return (
            super()
            .get_queryset(request)
            .annotate(
                # The row's peak, or the open sockets of a silent minute (billing/peaks.py).
                _last_peak=Greatest(
                    Coalesce(Subquery(usage.filter(minute=lm).values("peak_connections")[:1]), 0),
                    Coalesce(Subquery(level.order_by("-connections").values("connections")[:1]), 0),
                ),
                _last_messages=Subquery(usage.filter(minute=lm).values("messages_in")[:1]),
                _month_cpu=Subquery(month.annotate(n=Sum("cpu_us")).values("n")[:1]),
                _month_in=Subquery(month.annotate(n=Sum("messages_in")).values("n")[:1]),
            )
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # One query for every listed room's latency and cost, not one per row.
        now = timezone.now()
        self._latency = stats.latency_by_room(now - timedelta(hours=1), now)
        self._costs = stats.room_costs(costs.month_start(now), now)
        return super().changelist_view(request, extra_context)

    @admin.display(description="live connections", ordering="_last_peak")
    def live_connections(self, room: Room) -> int:
        runtime = _runtime()
        if runtime is not None and meter.connections(room.slug):
            return meter.connections(room.slug)
        return room._last_peak or 0  # type: ignore[attr-defined]

    @admin.display(description="messages/min", ordering="_last_messages")
    def messages_per_minute(self, room: Room) -> int:
        return room._last_messages or 0  # type: ignore[attr-defined]

    def _pct(self, room: Room, q: float) -> str:
        value = histogram.percentile(getattr(self, "_latency", {}).get(room.pk, {}), q)
        return "-" if value is None else f"{value:.2f}"

    @admin.display(description="p50 ms (1 h)")
    def p50_ms(self, room: Room) -> str:
        return self._pct(room, 0.5)

    @admin.display(description="p99 ms (1 h)")
    def p99_ms(self, room: Room) -> str:
        return self._pct(room, 0.99)

    @admin.display(description="cost this month (here, USD)", ordering="_month_cpu")
    def cost_month(self, room: Room) -> str:
        c = getattr(self, "_costs", {}).get(room.pk)
        return "0" if c is None else f"{c.here.total:.4f}"

    @admin.display(description="on Durable Objects (USD)", ordering="_month_in")
    def do_cost_month(self, room: Room) -> str:
        c = getattr(self, "_costs", {}).get(room.pk)
        return "0" if c is None else f"{c.durable_objects.total:.4f}"

    @admin.display(description="budget")
    def budget_status(self, room: Room) -> str:
        if room.slug in budgets.blocked:
            return "exceeded"
        if room.slug in budgets.warned:
            return "warning"
        return "ok" if Budget.objects.filter(room=room).exists() else "-"

    # -- the room page ---------------------------------------------------------------

    def get_urls(self) -> list:
        urls = super().get_urls()
        extra = [
            path("<int:room_id>/disconnect/<str:conn_id>/", self.admin_site.admin_view(self.disconnect_view),
                 name="rooms_room_disconnect"),
            path("<int:room_id>/close-room/", self.admin_site.admin_view(self.close_room_view), name="rooms_room_close"),
        ]
        return extra + urls

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        room = self.get_object(request, object_id)
        if room is not None:
            extra_context = {**(extra_context or {}), **self.room_context(room)}
        return super().change_view(request, object_id, form_url, extra_context)

    def room_context(self, room: Room) -> dict[str, Any]:
        now = timezone.now()
        runtime = _runtime()
        awake = runtime is not None and room.slug in runtime.registry.actors
        state: Any = None
        if awake:
            actor = runtime.registry.actors[room.slug]
            state = actor.kind.snapshot(actor.state)
            seq = actor.last_seq
        else:
            snap = Snapshot.objects.filter(room=room).order_by("-seq").values_list("seq", "state").first()
            seq = snap[0] if snap else 0
            state = snap[1] if snap else None
        connections = []
        if runtime is not None:
            connections = [
                {"id": c.id, "user": c.user_id, "scope": c.scope, "state": c.state.value}
                for c in runtime.hub.connections(room.slug)
            ]
        start = now.replace(second=0, microsecond=0) - timedelta(hours=24)
        series = stats.usage_series(start, now.replace(second=0, microsecond=0) + timedelta(minutes=1), [room.pk])
        month_usage, month_costs = costs.costs_between(costs.month_start(now), now, [room.pk])
        budget = Budget.objects.filter(room=room).first()
        owner = RoomOwner.objects.filter(room=room).select_related("owner").first()
        owner_budget = Budget.objects.filter(owner=owner.owner).first() if owner else None
        return {
            "room_awake": awake,
            "room_seq": seq,
            "room_state": state,
            "room_connections": connections,
            "room_history": list(Event.objects.filter(room=room).order_by("-seq")[:20]),
            "room_series": series,
            "room_usage": month_usage,
            "room_costs": month_costs.as_dict(),
            "room_budget": budget,
            "room_owner_budget": owner_budget,
            "room_budget_state": "exceeded" if room.slug in budgets.blocked else ("warning" if room.slug in budgets.warned else "ok"),
            "room_latency": histogram.summary(stats.latency(now - timedelta(hours=24), now, room_ids=[room.pk])),
        }

    def _close(self, room: Room, conn_id: str | None) -> int:
        runtime = _runtime()
        if runtime is None:
            return 0
        targets = [c for c in runtime.hub.connections(room.slug) if conn_id is None or c.id == conn_id]

        async def close_all() -> None:
            for conn in targets:
                reason = "disconnected by staff" if conn_id else "room closed by staff"
                await conn.close(STAFF_CLOSE_CODE, reason)

        async_to_sync(close_all)()
        return len(targets)

    def disconnect_view(self, request: HttpRequest, room_id: int, conn_id: str) -> HttpResponse:
        room = get_object_or_404(Room, pk=room_id)
        if request.method != "POST" or not self.has_change_permission(request, room):
            return HttpResponse(status=405)
        n = self._close(room, conn_id)
        self.message_user(request, f"closed {n} connection(s)", messages.SUCCESS if n else messages.WARNING)
        return HttpResponseRedirect(reverse("admin:rooms_room_change", args=[room.pk]))

    def close_room_view(self, request: HttpRequest, room_id: int) -> HttpResponse:
        room = get_object_or_404(Room, pk=room_id)
        if request.method != "POST" or not self.has_change_permission(request, room):
            return HttpResponse(status=405)
        n = self._close(room, None)
        self.message_user(request, f"closed {n} connection(s) of {room.slug}", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:rooms_room_change", args=[room.pk]))


admin.site.unregister(Room)
admin.site.register(Room, BillingRoomAdmin)


@admin.register(UsageMinute)
class UsageMinuteAdmin(admin.ModelAdmin):
    list_display = ("room", "minute", "connections_opened", "peak_connections", "messages_in", "messages_out",
                    "bytes_in", "bytes_out", "events_written", "actor_awake_ms", "cpu_us")
    list_select_related = ("room",)
    search_fields = ("room__slug",)
    date_hierarchy = "minute"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LatencyBucket)
class LatencyBucketAdmin(UsageMinuteAdmin):
    list_display = ("room", "minute", "metric", "bucket", "count")
    list_filter = ("metric",)


@admin.register(ConnectionSpan)
class ConnectionSpanAdmin(UsageMinuteAdmin):
    list_display = ("room", "connections", "since", "until", "process")
    date_hierarchy = "since"
    search_fields = ("room__slug", "process")


@admin.register(OpsCount)
class OpsCountAdmin(admin.ModelAdmin):
    list_display = ("minute", "what", "code", "count")
    list_filter = ("what",)


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ("key", "amount", "unit", "as_of", "source")
    list_editable = ("amount",)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("__str__", "monthly_limit", "basis", "spent_now", "warned_period", "exceeded_period", "checked_at")
    readonly_fields = ("spent", "warned_period", "exceeded_period", "checked_at")

    @admin.display(description="spent this month (USD)")
    def spent_now(self, budget: Budget) -> str:
        return f"{Decimal(budget.spent):.4f}"


@admin.register(RoomOwner)
class RoomOwnerAdmin(admin.ModelAdmin):
    list_display = ("room", "owner")
    search_fields = ("room__slug",)
