"""Choose and open the event store from settings.

``DATABASE_URL`` (``postgresql://...``) selects PostgreSQL, the production store and the
only one several processes can share. Without it the embedded SQLite store is used, in a
file (``AFTERCALL_DATA_DIR``/events.sqlite3 by default), so aftercall runs with no server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from events.store import EventStore, StoreUnavailable

DEFAULT_SQLITE_PATH = Path("var") / "events.sqlite3"


@asynccontextmanager
async def open_store(
    database_url: str | None, sqlite_path: Path | str = DEFAULT_SQLITE_PATH
) -> AsyncIterator[EventStore]:
    """The store for ``database_url`` (PostgreSQL) or, when it is empty, the SQLite file."""
    if not database_url:
        from events.sqlite import open_sqlite_store

        async with open_sqlite_store(sqlite_path) as store:
            yield store
        return
    if database_url.startswith(("postgres://", "postgresql://")):
        from events.postgres import open_postgres_store

        async with open_postgres_store(database_url) as pg_store:
            yield pg_store
        return
    if database_url.startswith("sqlite:///"):
        from events.sqlite import open_sqlite_store

        async with open_sqlite_store(database_url.removeprefix("sqlite:///")) as store:
            yield store
        return
    scheme = database_url.split(":", 1)[0]
    raise StoreUnavailable(
        f"DATABASE_URL has scheme {scheme!r}; use postgresql://... or sqlite:///path"
    )
