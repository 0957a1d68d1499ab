"""`manage.py check --deploy` in the production settings, and the start-up warning."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys

import pytest
from django.conf import settings
from django.test import override_settings

from rooms.checks import warn_at_start
from tests.security.conftest import ROOT, server_env

PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DORM_TOKEN_SECRET": secrets.token_urlsafe(40),
    "DJANGO_ALLOWED_HOSTS": "rt.example.com",
    "DJANGO_ALLOWED_ORIGINS": "https://app.example.com",
}


def check_deploy(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=server_env(**env),
        capture_output=True,
        text=True,
    )


def test_check_deploy_is_clean_in_production_settings() -> None:
    result = check_deploy(**PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"DORM_TOKEN_SECRET": ""}, "dorm.E001"),
        ({"DORM_TOKEN_SECRET": "short"}, "dorm.E001"),
        ({"DORM_TOKEN_SECRET": settings.DEV_TOKEN_SECRET}, "dorm.E002"),
        ({"DORM_ALLOW_ANONYMOUS": "true"}, "dorm.W001"),
        ({"DORM_TOKEN_ALGORITHM": "RS256"}, "dorm.E003"),
        ({"DJANGO_SECURE_HSTS_SECONDS": "0"}, "security.W004"),
        ({"DJANGO_DEBUG": "true"}, "security.W018"),
    ],
)
def test_check_deploy_flags_each_unsafe_production_setting(change: dict[str, str], expected: str) -> None:
    result = check_deploy(**{**PRODUCTION, **change})
    assert result.returncode != 0 and expected in result.stderr, result.stdout + result.stderr


def test_production_defaults_for_cookies_hsts_and_anonymous_access() -> None:
    code = (
        "from django.conf import settings as s; import json; print(json.dumps([s.SESSION_COOKIE_SECURE,"
        " s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT, s.DORM['ALLOW_ANONYMOUS'],"
        " s.DORM['TOKEN_SECRET'] == '', s.CSRF_TRUSTED_ORIGINS]))"
    )
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=server_env(**env), capture_output=True, text=True, check=True
    ).stdout.strip().splitlines()[-1]  # after `shell`'s own banner
    assert run({"DJANGO_DEBUG": "false"}) == '[true, true, 31536000, true, false, true, []]'
    assert run({"DJANGO_DEBUG": "false", "DJANGO_ALLOWED_ORIGINS": "https://app.example.com"}).endswith('["https://app.example.com"]]')
    # Development: anonymous on, a development token secret, no HSTS.
    assert run({}) == "[false, false, 0, false, true, false, []]"


def test_the_server_warns_at_start_when_production_allows_anonymous(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dorm")
    with override_settings(DEBUG=False, DORM={**settings.DORM, "ALLOW_ANONYMOUS": True, "TOKEN_SECRET": "k" * 40}):
        warn_at_start()
    assert [r.getMessage() for r in caplog.records] == [
        "insecure setting dorm.W001: DORM_ALLOW_ANONYMOUS is on with DEBUG off: anyone can join public rooms as any userId."
    ]
    caplog.clear()
    with override_settings(DEBUG=False, DORM={**settings.DORM, "ALLOW_ANONYMOUS": False, "TOKEN_SECRET": "k" * 40}):
        warn_at_start()
    assert caplog.records == []
