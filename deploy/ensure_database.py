"""Create the PostgreSQL database named in DATABASE_URL if it does not exist.

Used by `make cluster` so that a local cluster starts with one command.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlparse, urlunparse

import psycopg
from psycopg import sql


def main() -> int:
    url = os.environ.get("DATABASE_URL", "")
    parts = urlparse(url)
    if parts.scheme not in ("postgres", "postgresql"):
        print(f"DATABASE_URL is not a PostgreSQL URL: {url!r}", file=sys.stderr)
        return 2
    name = parts.path.lstrip("/")
    maintenance = urlunparse(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
