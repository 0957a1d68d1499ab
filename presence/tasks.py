"""Celery task wrapper for beat (the Celery app lives in config/ once it lands)."""

from __future__ import annotations

from typing import Any

try:
    from celery import shared_task
except ImportError:  # pragma: no cover - celery is pinned in requirements.txt
    shared_task = None


def sweep() -> dict[str, int]:
    from presence.sweep import sweep_stale

    return sweep_stale()


if shared_task is not None:
    sweep = shared_task(name="presence.tasks.sweep", ignore_result=True)(sweep)  # type: ignore[assignment]

__all__: list[Any] = ["sweep"]
