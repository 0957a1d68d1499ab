"""The cost model: what a room's (or many rooms') usage costs here, and what
the same usage would cost on Cloudflare Durable Objects and on a hosted
per-connection service. Prices are rows (``billing.models.Price``, editable in
the admin; defaults from a data migration with their source and date).
Decimal arithmetic throughout, so docs/billing.md's worked example is
reproduced to the last digit (tests/unit/test_billing_costs.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from importlib import import_module

from django.db.models import Sum
from django.db.models.functions import Length

MILLION = Decimal(1_000_000)
GB = Decimal(1_000_000_000)  # decimal gigabytes, as the providers bill
MONTH_SECONDS = Decimal(30 * 24 * 3600)  # a billing month, for prorating

PRICE_KEYS = (
    "do.requests_per_million",
    "do.ws_messages_per_request",
    "do.duration_per_million_gb_s",
    "do.memory_gb",
    "do.rows_read_per_million",
    "do.rows_written_per_million",
    "do.storage_per_gb_month",
    "hosted.per_peak_connection_month",
    "here.cpu_per_vcpu_hour",
    "here.storage_per_gb_month",
)


@dataclass
class Usage:
    connections_opened: int = 0
    connections_closed: int = 0
    peak_connections: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    events_written: int = 0
    rows_read: int = 0
    rows_written: int = 0
    storage_bytes_written: int = 0
    actor_awake_ms: int = 0
    alarms_fired: int = 0
    cpu_us: int = 0


@dataclass
class Cost:
    """One provider's total and its line items (USD)."""

    total: Decimal = Decimal(0)
    items: dict[str, Decimal] = field(default_factory=dict)

    def add(self, name: str, amount: Decimal) -> None:
        self.items[name] = amount
        self.total += amount


@dataclass
class Costs:
    here: Cost
    durable_objects: Cost
    hosted: Cost

    def basis(self, name: str) -> Decimal:
        return getattr(self, name).total

    def as_dict(self) -> dict[str, dict[str, str]]:
        """For display: USD to a millionth of a cent's neighbourhood (6 places)."""
        return {
            name: {"total": f"{c.total:.6f}", **{k: f"{v:.6f}" for k, v in c.items.items()}}
            for name, c in (("here", self.here), ("durable_objects", self.durable_objects), ("hosted", self.hosted))
        }


def compute(usage: Usage, storage_bytes: int, period_seconds: Decimal | int, prices: dict[str, Decimal]) -> Costs:
    """The three costs of ``usage`` over a period of ``period_seconds``.

    ``storage_bytes`` is what the rooms store (log, snapshots, key-value) and
    is billed per GB-month, prorated to the period; so is a hosted service's
    price per peak connection.
    """
    p = prices
    months = Decimal(period_seconds) / MONTH_SECONDS
    gb_months = Decimal(storage_bytes) / GB * months

    do = Cost()
    # HTTP requests (a WebSocket upgrade is one), alarm invocations, and
    # incoming WebSocket messages at 20 to a request.
    requests = (
        Decimal(usage.connections_opened + usage.alarms_fired)
        + Decimal(usage.messages_in) / p["do.ws_messages_per_request"]
    )
    do.add("requests", requests * p["do.requests_per_million"] / MILLION)
    gb_s = Decimal(usage.actor_awake_ms) / 1000 * p["do.memory_gb"]
    do.add("duration", gb_s * p["do.duration_per_million_gb_s"] / MILLION)
    do.add("rows_read", Decimal(usage.rows_read) * p["do.rows_read_per_million"] / MILLION)
    do.add("rows_written", Decimal(usage.rows_written) * p["do.rows_written_per_million"] / MILLION)
    do.add("storage", gb_months * p["do.storage_per_gb_month"])

    hosted = Cost()
    hosted.add("peak_connections", Decimal(usage.peak_connections) * p["hosted.per_peak_connection_month"] * months)

    here = Cost()
    here.add("cpu", Decimal(usage.cpu_us) / Decimal(3_600_000_000) * p["here.cpu_per_vcpu_hour"])
    here.add("storage", gb_months * p["here.storage_per_gb_month"])
    return Costs(here=here, durable_objects=do, hosted=hosted)


# -- reading usage, storage and prices from the database -------------------------------


def load_prices() -> dict[str, Decimal]:
    from billing.models import Price

    prices = dict(Price.objects.values_list("key", "amount"))
    missing = [k for k in PRICE_KEYS if k not in prices]
    if missing:
        # A deleted row falls back to the migration's list price, so the
        # admin and the budgets keep working (one source for the defaults).
        defaults = import_module("billing.migrations.0002_default_prices").PRICES
        prices.update({key: Decimal(amount) for key, amount, _unit, _source in defaults if key in missing})
    return prices


def usage_between(start: datetime, end: datetime, room_ids: Iterable[int] | None = None) -> Usage:
    """Usage summed over minutes in [start, end); peak = the largest minute's
    sum over rooms (silent minutes' open sockets included: billing/peaks.py)."""
    from billing import peaks
    from billing.models import COUNTER_FIELDS, UsageMinute

    ids = None if room_ids is None else list(room_ids)
    rows = UsageMinute.objects.filter(minute__gte=start, minute__lt=end)
    if ids is not None:
        rows = rows.filter(room_id__in=ids)
    sums = rows.aggregate(**{f: Sum(f) for f in COUNTER_FIELDS})
    peak = peaks.load(start, end, ids).max_total()
    return Usage(peak_connections=peak, **{f: int(sums[f] or 0) for f in COUNTER_FIELDS})


def storage_bytes(room_ids: Iterable[int] | None = None) -> int:
    """What the rooms store now: event payloads, snapshots, key-value values."""
    from rooms.models import Event, Snapshot, StoredValue

    total = 0
    for model, column in ((Event, "payload"), (Snapshot, "state"), (StoredValue, "value")):
        qs = model.objects.all()
        if room_ids is not None:
            qs = qs.filter(room_id__in=list(room_ids))
        total += int(qs.aggregate(n=Sum(Length(column)))["n"] or 0)
    return total


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def costs_between(
    start: datetime, end: datetime, room_ids: Iterable[int] | None = None, prices: dict[str, Decimal] | None = None
) -> tuple[Usage, Costs]:
    ids = None if room_ids is None else list(room_ids)
    usage = usage_between(start, end, ids)
    seconds = Decimal(int((end - start).total_seconds()))
    return usage, compute(usage, storage_bytes(ids), seconds, prices or load_prices())


def usage_fields() -> list[str]:
    return [f.name for f in fields(Usage)]
