from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from rooms.models import ActorRun, Alarm, Event, Room, Snapshot, StoredValue


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ("slug", "kind", "private", "max_connections", "created_at")
    list_filter = ("kind", "private")
    search_fields = ("slug",)


class ReadOnlyAdmin(admin.ModelAdmin):
    """The log is append-only: staff read it, nobody edits it here."""

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("room", "seq", "type", "user_id", "client_id", "ts")
    list_filter = ("type",)
    search_fields = ("room__slug", "user_id", "client_id")
    list_select_related = ("room",)
    show_full_result_count = False


@admin.register(Snapshot)
class SnapshotAdmin(ReadOnlyAdmin):
    list_display = ("room", "seq", "created_at")
    list_select_related = ("room",)


@admin.register(StoredValue)
class StoredValueAdmin(admin.ModelAdmin):
    list_display = ("room", "key", "updated_at")
    search_fields = ("room__slug", "key")
    list_select_related = ("room",)


@admin.register(ActorRun)
class ActorRunAdmin(ReadOnlyAdmin):
    list_display = ("room", "process", "woke_at", "slept_at", "awake_ms", "sleep_reason")
    list_filter = ("sleep_reason",)
    list_select_related = ("room",)


@admin.register(Alarm)
class AlarmAdmin(admin.ModelAdmin):
    """Alarms are set by rooms; staff see failures with their last error and
    may retry or delete them, never edit one."""

    list_display = ("room", "name", "status", "due_at", "next_attempt_at", "attempts", "last_error", "claimed_until")
    list_filter = ("status",)
    search_fields = ("room__slug", "name")
    list_select_related = ("room",)
    readonly_fields = [f.name for f in Alarm._meta.fields]
    actions = ["retry_now"]

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    @admin.action(description="Retry now (attempts start over)")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Alarm]) -> None:
        queryset.update(
            status=Alarm.SCHEDULED, attempts=0, next_attempt_at=timezone.now(), claimed_until=None, last_error=""
        )
