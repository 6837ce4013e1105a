"""Where the event log lives, and the read models that belong with it.

``DATABASE_URL`` selects PostgreSQL, the production store and the only one several
processes can share; without it the embedded SQLite file in ``AFTERCALL_DATA_DIR`` (default
``./var``) is used, so aftercall runs with no server. Every command and the web app read
the location the same way, so ``aftercall events tail`` looks at the log the server writes.

Each backend brings its read models: they must live in the same database as the log,
because a projection writes its rows and its checkpoint in one transaction. The pairing is
made here, in the composition root, so ``projections`` never asks which store it was given.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs

from events.postgres import PostgresEventStore, open_postgres_store
from events.sqlite import SQLiteEventStore, open_sqlite_store
from events.store import EventStore, StoreUnavailable
from projections.postgres import PostgresReadModels
from projections.readmodels import ReadModels
from projections.sqlite import open_sqlite_read_models

DEFAULT_SQLITE_PATH = Path("var") / "events.sqlite3"


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


@asynccontextmanager
async def open_store(
    database_url: str | None, sqlite_path: Path | str = DEFAULT_SQLITE_PATH
) -> AsyncIterator[EventStore]:
    """The store for ``database_url`` (PostgreSQL) or, when it is empty, the SQLite file."""
    if not database_url:
        async with open_sqlite_store(sqlite_path) as store:
            yield store
        return
    if database_url.startswith(("postgres://", "postgresql://")):
        async with open_postgres_store(database_url) as pg_store:
            yield pg_store
        return
    if database_url.startswith("sqlite:///"):
        async with open_sqlite_store(database_url.removeprefix("sqlite:///")) as store:
            yield store
        return
    scheme = database_url.split(":", 1)[0]
    raise StoreUnavailable(
        f"DATABASE_URL has scheme {scheme!r}; use postgresql://... or sqlite:///path"
    )


@asynccontextmanager
async def _postgres_read_models(store: PostgresEventStore) -> AsyncIterator[ReadModels]:
    yield PostgresReadModels(store.database)


def _sqlite_read_models(store: SQLiteEventStore) -> AbstractAsyncContextManager[ReadModels]:
    return open_sqlite_read_models(store.path)


#: Each backend's read models, by the class of its store.
READ_MODELS: Mapping[type[Any], Callable[[Any], AbstractAsyncContextManager[ReadModels]]] = {
    PostgresEventStore: _postgres_read_models,
    SQLiteEventStore: _sqlite_read_models,
}


def open_read_models(store: EventStore) -> AbstractAsyncContextManager[ReadModels]:
    """The read models in the same database as ``store``."""
    factory = READ_MODELS.get(type(store))
    if factory is None:
        raise TypeError(f"no read models for an event store of type {type(store).__name__}")
    return factory(store)
