from django.contrib import admin

from webhooks.models import Delivery, Endpoint


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    list_display = ("url", "owner", "room", "active", "created_at")
    list_filter = ("active",)
    search_fields = ("url", "room__slug", "owner__username")
    list_select_related = ("owner", "room")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    """The delivery log: read-only, written by the delivery task."""

    list_display = ("id", "event", "room_slug", "endpoint", "status", "attempts", "last_status_code", "created_at", "delivered_at")
    list_filter = ("status", "event")
    search_fields = ("room_slug", "endpoint__url")
    list_select_related = ("endpoint",)
    show_full_result_count = False

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False
