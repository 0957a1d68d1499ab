from django.apps import AppConfig


class RoomsConfig(AppConfig):
    name = "rooms"
    verbose_name = "Rooms"

    def ready(self) -> None:
        from rooms import checks, redact  # noqa: F401  (registers the system checks)

        redact.install()
        # A deadline on every database call of the async side (docs/runtime.md,
        # "Database outage").
        from rooms.runtime import db_watchdog

        db_watchdog.install()
