"""System checks for Dorm's security settings, and the warning logged at start.

``manage.py check --deploy`` runs the deploy checks; the server itself does
not run system checks, so ``warn_at_start`` (called from ``config/asgi.py``)
logs the same risks when the ASGI application is built.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

from rooms import tokens
from rooms.conf import dorm_settings

log = logging.getLogger("dorm.security")


def _problems() -> list[tuple[str, str, bool]]:
    """(id, message, is_error) for the settings a production server must not run with."""
    problems: list[tuple[str, str, bool]] = []
    if settings.DEBUG:
        return problems
    if dorm_settings.ALLOW_ANONYMOUS:
        problems.append(
            (
                "dorm.W001",
                "DORM_ALLOW_ANONYMOUS is on with DEBUG off: anyone can join public rooms as any userId.",
                False,
            )
        )
    algorithm = str(dorm_settings.TOKEN_ALGORITHM)
    if algorithm in tokens.HMAC_ALGORITHMS:
        secret = str(dorm_settings.TOKEN_SECRET or "")
        if len(secret.encode()) < tokens.MIN_HMAC_SECRET_BYTES:
            problems.append(
                (
                    "dorm.E001",
                    f"DORM_TOKEN_SECRET must be set to at least {tokens.MIN_HMAC_SECRET_BYTES} bytes: "
                    "every room token is refused without it.",
                    True,
                )
            )
        elif secret == settings.DEV_TOKEN_SECRET:
            problems.append(("dorm.E002", "DORM_TOKEN_SECRET is the public development secret.", True))
    elif algorithm in tokens.ASYMMETRIC_ALGORITHMS:
        if not dorm_settings.TOKEN_PUBLIC_KEY:
            problems.append(("dorm.E003", f"{algorithm} needs DORM_TOKEN_PUBLIC_KEY(_FILE).", True))
    else:
        problems.append(("dorm.E004", f"DORM_TOKEN_ALGORITHM {algorithm!r} is not supported.", True))
    return problems


@register(deploy=True)
def check_security(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    return [Error(msg, id=id_) if is_error else Warning(msg, id=id_) for id_, msg, is_error in _problems()]


def warn_at_start() -> None:
    for id_, message, is_error in _problems():
        (log.error if is_error else log.warning)("insecure setting %s: %s", id_, message)
