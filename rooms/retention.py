"""History retention: keep the last N events or the last D days of each room.

Policies are per kind (``DORM["RETENTION"]``, ``"*"`` for every other kind)
and a room's ``settings["retention"]`` may override them:
``{"keep_events": 10000, "keep_days": 30}``. With both set, each removes what
it excludes (the stricter wins). Three rules keep deletion safe:

- **Snapshot first.** Events are deleted only up to a stored snapshot; when the
  newest snapshot is older than the cut, one is written first, folded from
  the stored snapshot and log exactly as a waking actor does. A room's state
  never depends on a deleted event, and seq never goes back (the snapshot
  holds the latest seq even when no event is left).
- **Never inside the idempotency window.** Events younger than
  ``DEDUP_WINDOW_SECONDS`` stay, so a client's retry still finds its
  original and is not applied twice.
- **Resume degrades, never lies.** A ``since`` older than what is kept gets
  ``resumed: false`` and the full state (the actor checks the replay is
  complete).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from django.db import transaction
from django.db.models import Max, Min

from rooms.conf import dorm_settings
from rooms.kinds import UnknownKind, kind_class
from rooms.kinds.base import DurableEvent
from rooms.models import Event, Room, Snapshot
from rooms.runtime import persistence

log = logging.getLogger("dorm.retention")

DAY_MS = 86_400_000


def policy_for(kind: str, settings: dict[str, Any] | None) -> dict[str, Any]:
    conf = dorm_settings.RETENTION or {}
    policy = dict(conf.get(kind, conf.get("*")) or {})
    override = (settings or {}).get("retention")
    if isinstance(override, dict):
        policy.update(override)
    return {k: v for k, v in policy.items() if k in ("keep_events", "keep_days") and v}


def snapshot_now(room: Room) -> int:
    """Fold the newest snapshot and the log after it; store the result; its seq."""
    loaded = persistence.load_room(room.slug, create_kind=None, ids_since_ms=0, ids_limit=0)  # no ids needed
    kind = kind_class(loaded.kind)(loaded.settings)
    state = (
        kind.initial_state() if loaded.snapshot_state is None else kind.load_state(orjson.loads(loaded.snapshot_state))
    )
    for seq, type_, user_id, _cid, payload, ts in loaded.tail:
        state = kind.fold(state, DurableEvent(seq, type_, user_id, orjson.loads(payload) if payload else None, ts))
    if loaded.tail:
        persistence.save_snapshot(room.pk, loaded.last_seq, orjson.dumps(kind.dump_state(state)).decode())
    return loaded.last_seq


def retain_room(room: Room, now_ms: int | None = None) -> int:
    """Apply the room's policy; the number of events deleted."""
    policy = policy_for(room.kind, room.settings)
    if not policy:
        return 0
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    events = Event.objects.filter(room=room)
    bounds = events.aggregate(first=Min("seq"), last=Max("seq"))
    if bounds["last"] is None:
        return 0
    cut = 0
    if policy.get("keep_events"):
        cut = max(cut, bounds["last"] - max(1, int(policy["keep_events"])))
    if policy.get("keep_days"):
        older = events.filter(ts__lt=now_ms - int(float(policy["keep_days"]) * DAY_MS)).aggregate(m=Max("seq"))["m"]
        cut = max(cut, older or 0)
    window_ms = int(float(dorm_settings.DEDUP_WINDOW_SECONDS) * 1000)
    recent = events.filter(ts__gte=now_ms - window_ms).aggregate(m=Min("seq"))["m"]
    if recent is not None:
        cut = min(cut, recent - 1)
    if cut < bounds["first"]:
        return 0
    snap_seq = Snapshot.objects.filter(room=room).aggregate(m=Max("seq"))["m"] or 0
    if snap_seq < cut:
        snap_seq = snapshot_now(room)
    cut = min(cut, snap_seq)
    with transaction.atomic():
        deleted, _ = Event.objects.filter(room=room, seq__lte=cut).delete()
        Snapshot.objects.filter(room=room, seq__lt=cut).delete()
    if deleted:
        log.info("retention room=%s deleted=%d upto_seq=%d snapshot_seq=%d", room.slug, deleted, cut, snap_seq)
    return deleted


def apply_retention() -> dict[str, int]:
    """Every room with a policy; ``{"rooms": n, "deleted": m}``."""
    if not dorm_settings.RETENTION and not Room.objects.filter(settings__has_key="retention").exists():
        return {"rooms": 0, "deleted": 0}
    rooms = deleted = 0
    for room in Room.objects.only("id", "slug", "kind", "settings").iterator():
        try:
            n = retain_room(room)
        except UnknownKind:
            continue
        except Exception as exc:
            log.warning("retention failed room=%s error=%s", room.slug, type(exc).__name__)
            continue
        rooms += 1 if n else 0
        deleted += n
    return {"rooms": rooms, "deleted": deleted}
