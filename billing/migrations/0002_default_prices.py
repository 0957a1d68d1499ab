"""Default prices: public list prices with their source and date.

Durable Objects: Workers Paid plan, beyond the included allowances (which
the model leaves out, as it leaves out the plan's monthly fee). The hosted
service: a per-connection plan (500 peak connections for 49 USD a month). Here:
one vCPU of a general-purpose cloud VM and block storage for the database.
Edit them in the admin (Billing > Prices).
"""

from datetime import date
from decimal import Decimal

from django.db import migrations

# The Durable Objects pricing page as of SQLite storage billing (from 2026-01-07).
AS_OF = date(2026, 1, 7)
DO = "Cloudflare Durable Objects pricing (developers.cloudflare.com/durable-objects/platform/pricing/)"

PRICES = [
    ("do.requests_per_million", "0.15", "USD per million requests", DO),
    ("do.ws_messages_per_request", "20", "incoming WebSocket messages billed as one request", DO),
    ("do.duration_per_million_gb_s", "12.50", "USD per million GB-s of wall time while awake", DO),
    ("do.memory_gb", "0.128", "GB billed per object (128 MB)", DO),
    ("do.rows_read_per_million", "0.001", "USD per million SQLite rows read", DO),
    ("do.rows_written_per_million", "1.00", "USD per million SQLite rows written", DO),
    ("do.storage_per_gb_month", "0.20", "USD per GB-month of SQLite storage", DO),
    ("hosted.per_peak_connection_month", "0.098", "USD per peak concurrent connection per month",
     "Pusher Channels Startup plan: 49 USD/month for 500 concurrent connections"),
    ("here.cpu_per_vcpu_hour", "0.0504", "USD per vCPU-hour",
     "AWS EC2 m7i.large on demand, us-east-1: 0.1008 USD/hour for 2 vCPUs"),
    ("here.storage_per_gb_month", "0.115", "USD per GB-month of database storage",
     "AWS RDS gp3 storage, us-east-1, single-AZ"),
]


def add_prices(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    for key, amount, unit, source in PRICES:
        Price.objects.update_or_create(
            key=key, defaults={"amount": Decimal(amount), "unit": unit, "source": source, "as_of": AS_OF}
        )


def remove_prices(apps, schema_editor):
    apps.get_model("billing", "Price").objects.filter(key__in=[p[0] for p in PRICES]).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(add_prices, remove_prices)]
