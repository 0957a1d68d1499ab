"""Shared fixtures. Fixture modules register here (saleor's pytest_plugins way)."""

from __future__ import annotations

import os

# Tests never write to the developer's db.sqlite3: the test database of the
# unit tests is created by pytest-django, e2e servers get their own file.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

pytest_plugins = [
    "tests.fixtures.runtime",
    "tests.fixtures.redis",
    "tests.fixtures.api",
    "tests.fixtures.servers",
    "tests.fixtures.services",
    "tests.fixtures.receiver",
]
