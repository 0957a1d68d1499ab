from django.apps import AppConfig


class RoomsConfig(AppConfig):
    name = "rooms"
    verbose_name = "Rooms"

    def ready(self) -> None:
        from rooms import checks, redact  # noqa: F401  (registers the system checks)
        from rooms import access  # noqa: F401  (invalidates its cache when a room is saved)

        redact.install()
        # Cancelling a task that talks to Redis must not be lost on Python 3.11
        # (rooms/runtime/asyncio_fixes.py).
        from rooms.runtime import asyncio_fixes

        asyncio_fixes.install()
        # A deadline on every database call of the async side (docs/runtime.md,
        # "Database outage").
        from rooms.runtime import db_watchdog

        db_watchdog.install()
