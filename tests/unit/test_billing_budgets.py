"""Budgets computed from the usage rows: per room and per owner, warning and
exceeded levels, and the in-memory sets the hot path reads."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from billing import budgets, costs
from billing.flush import flush_sync
from billing.meter import Meter
from billing.models import Budget, Price, RoomOwner, UsageMinute
from billing.stats import last_minute
from rooms.models import Room

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _clean_sets():
    yield
    budgets.apply({})


@pytest.fixture
def one_dollar_per_request() -> None:
    Price.objects.update(amount=0)
    Price.objects.filter(key="do.requests_per_million").update(amount=Decimal(1_000_000))
    Price.objects.filter(key="do.ws_messages_per_request").update(amount=Decimal(20))


def use(room: Room, messages: int) -> None:
    """Add a minute of usage (one row per room and minute: each call a new minute)."""
    minute = last_minute(timezone.now()) - timedelta(minutes=UsageMinute.objects.filter(room=room).count())
    if minute < costs.month_start(timezone.now()):
        pytest.skip("too early in the month for back-dated minutes")
    UsageMinute.objects.create(room=room, minute=minute, messages_in=messages)


def test_owner_budget_adds_up_the_owners_rooms(one_dollar_per_request: None) -> None:
    owner = User.objects.create_user("owner")
    a, b, other = (Room.objects.create(slug=s) for s in ("a", "b", "other"))
    RoomOwner.objects.create(room=a, owner=owner)
    RoomOwner.objects.create(room=b, owner=owner)
    Budget.objects.create(owner=owner, monthly_limit=10, basis=Budget.Basis.DURABLE_OBJECTS)
    use(a, 100)  # 5 USD
    use(b, 70)  # 3.5 USD: together 8.5 -> warned
    use(other, 1000)  # not the owner's
    statuses = budgets.compute_statuses()
    assert {s: st.level for s, st in statuses.items()} == {"a": "warned", "b": "warned"}
    assert statuses["a"].spent == Decimal("8.5") and statuses["a"].scope == "owner"
    crossed = budgets.apply(statuses)
    assert sorted(s for s, _ in crossed) == ["a", "b"]
    assert budgets.warned == {"a", "b"} and budgets.blocked == set()
    assert budgets.apply(budgets.compute_statuses()) == []  # warned once per crossing
    use(b, 40)  # +2 USD: 10.5 -> blocked
    crossed = budgets.apply(budgets.compute_statuses())
    assert {s for s, st in crossed if st.level == "blocked"} == {"a", "b"}
    assert budgets.blocked == {"a", "b"}
    assert "10.00 USD" in budgets.refusal_detail("a")
    budget = Budget.objects.get()
    assert budget.warned_period and budget.exceeded_period and budget.spent == Decimal("10.5")
    frame = budgets.warning_frame(statuses["a"])
    assert '"type":"budget_warning"' in frame and '"level":"warning"' in frame


def test_room_budget_on_the_here_basis_and_raising_it(one_dollar_per_request: None) -> None:
    room = Room.objects.create(slug="r")
    Price.objects.filter(key="here.cpu_per_vcpu_hour").update(amount=Decimal(3600))  # 1 USD per CPU second
    UsageMinute.objects.create(room=room, minute=last_minute(timezone.now()), cpu_us=2_000_000)
    Budget.objects.create(room=room, monthly_limit=2)
    budgets.apply(budgets.compute_statuses())
    assert budgets.blocked == {"r"}
    Budget.objects.filter(room=room).update(monthly_limit=100)
    budgets.apply(budgets.compute_statuses())
    assert budgets.blocked == set() and budgets.warned == set()


def test_flush_sync_is_callable_from_a_scheduler() -> None:
    Room.objects.create(slug="beat")
    m = Meter()
    m.frame_in("beat", 12)
    m.frame_in("nonexistent-room", 12)  # refused before the room existed: dropped
    assert flush_sync(m) == 1
    row = UsageMinute.objects.get(room__slug="beat")
    assert (row.messages_in, row.bytes_in) == (1, 12)
