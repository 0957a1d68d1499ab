"""Set-up of the in-process benchmarks (``commit_hop.py``, ``usage_flush.py``):
Django on a database of their own, before anything imports a model.

SQLite: a new file in the temporary directory (named after the benchmark).
PostgreSQL: ``DATABASE_URL``, migrated by the benchmark, so give it a
database of its own.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def setup_django(name: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if not os.environ.get("DATABASE_URL"):
        os.environ.setdefault("SQLITE_PATH", tempfile.mktemp(suffix=".sqlite3", prefix=f"dorm-{name}-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DJANGO_DEBUG", "false")
    import django

    django.setup()
