from datetime import timedelta

from django.contrib import admin
from django.http import HttpRequest

from presence.models import PresenceProcess, PresenceSession


class OpenFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "open"

    def lookups(self, request, model_admin):  # type: ignore[no-untyped-def]
        return [("yes", "open"), ("no", "closed")]

    def queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        if self.value() == "yes":
            return queryset.filter(left_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(left_at__isnull=False)
        return queryset


@admin.register(PresenceSession)
class PresenceSessionAdmin(admin.ModelAdmin):
    """The ledger, read-only: filter by room and user (search), time (dates)."""

    list_display = ("room", "user_id", "connection_id", "joined_at", "left_at", "duration", "close_code", "close_reason")
    list_filter = (OpenFilter, "joined_at", "left_at", "close_code", "room")
    search_fields = ("=room", "=user_id", "=connection_id")
    date_hierarchy = "joined_at"
    readonly_fields = [f.name for f in PresenceSession._meta.fields]

    @admin.display(description="duration")
    def duration(self, obj: PresenceSession) -> timedelta | None:
        return None if obj.left_at is None else obj.left_at - obj.joined_at

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(PresenceProcess)
class PresenceProcessAdmin(admin.ModelAdmin):
    list_display = ("process", "started_at", "beat_at", "stopped_at", "dead")
    list_filter = ("dead",)
    readonly_fields = ("process", "started_at", "beat_at", "stopped_at", "dead")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
