from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from billing import spans
        from presence.signals import process_gone

        # A process that died took its sockets with it: its connection levels
        # end at its last beat.
        process_gone.connect(spans.close_gone_process, dispatch_uid="billing-close-gone-process")
