"""Fixtures shared by the whole suite: a real PostgreSQL, a real SQLite file, both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from events.postgres_bridge import PostgresOptions
from events.store import EventStore
from tests.postgres_server import (
    NoPostgres,
    PostgresServer,
    find_or_start,
    new_schema_name,
    psql,
    sweep_dead_schemas,
)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        server = find_or_start()
    except NoPostgres as exc:
        pytest.exit(str(exc), returncode=2)
    sweep_dead_schemas(server.dsn)  # left by interrupted earlier runs
    yield server
    server.stop()


@pytest.fixture
def pg_schema(postgres: PostgresServer) -> Iterator[str]:
    """A fresh schema name for one test; the store creates it, the fixture drops it."""
    schema = new_schema_name()
    yield schema
    psql(postgres.dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite3"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer
) -> AsyncIterator[EventStore]:
    """The same contract, once per backend."""
    if request.param == "sqlite":
        from events.sqlite import open_sqlite_store

        async with open_sqlite_store(tmp_path / "events.sqlite3") as sqlite_store:
            yield sqlite_store
        return
    from events.postgres import open_postgres_store

    schema = new_schema_name()
    try:
        async with open_postgres_store(postgres.dsn, PostgresOptions(schema=schema)) as pg_store:
            yield pg_store
    finally:
        psql(postgres.dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
