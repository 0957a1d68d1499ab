"""Budgets enforced at run time, without a database query per message.

Each process keeps two in-memory sets of room slugs, refreshed after each
usage flush (``refresh``): ``blocked`` rooms refuse new connections with 4402
and durable writes with an ``over_budget`` error; ``warned`` rooms got their
``budget_warning`` event this period. The hot path only tests membership.
"""

from __future__ import annotations

# Slugs of rooms whose budget (theirs or their owner's) is spent this month.
blocked: set[str] = set()
# Slugs of rooms past their warning share this month.
warned: set[str] = set()
# slug -> (spent, limit) as text, for the error detail.
_detail: dict[str, tuple[str, str]] = {}

OVER_BUDGET = "over_budget"


def refusal_detail(slug: str) -> str:
    spent, limit = _detail.get(slug, ("?", "?"))
    return (
        f"this room's monthly budget ({limit} USD) is spent ({spent} USD): durable messages are refused "
        "until the month ends or staff raise the budget"
    )

import logging  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime  # noqa: E402
from decimal import Decimal  # noqa: E402

from channels.db import database_sync_to_async  # noqa: E402
from django.utils import timezone  # noqa: E402

log = logging.getLogger("dorm.billing")


@dataclass(frozen=True, slots=True)
class Status:
    level: str  # "ok", "warned", "blocked"
    spent: Decimal
    limit: Decimal
    scope: str  # "room" or "owner"


def period_of(now: datetime) -> str:
    return f"{now:%Y-%m}"


def compute_statuses(now: datetime | None = None) -> dict[str, Status]:
    """Every budgeted room's status this month, from the usage rows (one pass)."""
    from billing import costs
    from billing.models import Budget, RoomOwner
    from rooms.models import Room

    now = now or timezone.now()
    budgets = list(Budget.objects.all())
    if not budgets:
        return {}
    prices = costs.load_prices()
    start = costs.month_start(now)
    period = period_of(now)
    statuses: dict[str, Status] = {}
    rank = {"ok": 0, "warned": 1, "blocked": 2}
    for budget in budgets:
        if budget.room_id is not None:
            rooms = list(Room.objects.filter(pk=budget.room_id).values_list("pk", "slug"))
            scope = "room"
        else:
            ids = RoomOwner.objects.filter(owner_id=budget.owner_id).values_list("room_id", flat=True)
            rooms = list(Room.objects.filter(pk__in=list(ids)).values_list("pk", "slug"))
            scope = "owner"
        _, result = costs.costs_between(start, now, [pk for pk, _ in rooms], prices)
        spent = result.basis(budget.basis)
        limit = budget.monthly_limit
        level = "ok"
        if spent >= limit:
            level = "blocked"
        elif spent >= limit * budget.warn_fraction:
            level = "warned"
        changes: dict = {"spent": spent, "checked_at": now}
        if level != "ok" and budget.warned_period != period:
            changes["warned_period"] = period
        if level == "blocked" and budget.exceeded_period != period:
            changes["exceeded_period"] = period
        Budget.objects.filter(pk=budget.pk).update(**changes)
        for _, slug in rooms:
            prior = statuses.get(slug)
            if prior is None or rank[level] > rank[prior.level]:
                statuses[slug] = Status(level, spent, limit, scope)
    return statuses


def apply(statuses: dict[str, Status]) -> list[tuple[str, Status]]:
    """Install the new sets; the rooms that crossed a threshold here (to warn)."""
    crossed = []
    for slug, status in statuses.items():
        if status.level == "ok":
            continue
        newly = (status.level == "warned" and slug not in warned and slug not in blocked) or (
            status.level == "blocked" and slug not in blocked
        )
        if newly:
            crossed.append((slug, status))
    blocked.clear()
    blocked.update(s for s, st in statuses.items() if st.level == "blocked")
    warned.clear()
    warned.update(s for s, st in statuses.items() if st.level != "ok")
    _detail.clear()
    _detail.update({s: (f"{st.spent:.4f}", f"{st.limit:.2f}") for s, st in statuses.items()})
    return crossed


def warning_frame(status: Status) -> str:
    from rooms.protocol import dumps, now_ms

    percent = int(status.spent * 100 / status.limit) if status.limit else 100
    return dumps(
        {
            "type": "budget_warning",
            "payload": {
                "scope": status.scope,
                "level": "exceeded" if status.level == "blocked" else "warning",
                "percent": percent,
                "spentUsd": f"{status.spent:.4f}",
                "limitUsd": f"{status.limit:.2f}",
            },
            "ts": now_ms(),
        }
    )


_db_compute = database_sync_to_async(compute_statuses)


async def refresh() -> None:
    """Recompute every budget and warn this process's sockets of rooms that crossed.

    Each process warns its own sockets of a room, so every client gets the
    event once wherever it is connected.
    """
    from rooms.runtime.registry import get_runtime

    crossed = apply(await _db_compute())
    hub = get_runtime().hub
    for slug, status in crossed:
        log.info("budget room=%s level=%s percent_of_limit=%s", slug, status.level,
                 int(status.spent * 100 / status.limit) if status.limit else 100)
        await hub.deliver(slug, warning_frame(status), None, None)
