"""Where the event log lives, from the environment.

``DATABASE_URL`` selects PostgreSQL; without it the embedded SQLite file in
``AFTERCALL_DATA_DIR`` (default ``./var``) is used. Every command and the web app read the
location the same way, so ``aftercall events tail`` looks at the log the server writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs


@attrs.frozen
class StoreLocation:
    database_url: str | None
    sqlite_path: Path

    def describe(self) -> str:
        """Where the log is, for people; never shows a password."""
        if self.database_url:
            return redact_url(self.database_url)
        return f"sqlite file {self.sqlite_path}"


def store_location(environ: Mapping[str, str] | None = None) -> StoreLocation:
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("AFTERCALL_DATA_DIR") or "var")
    return StoreLocation(env.get("DATABASE_URL") or None, data_dir / "events.sqlite3")


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"
