"""Fixtures shared by the whole suite: a real PostgreSQL, a real SQLite file, both stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from events.store import EventStore
from tests.postgres_server import NoPostgres, PostgresServer, find_or_start, psql


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        server = find_or_start()
    except NoPostgres as exc:
        pytest.exit(str(exc), returncode=2)
    # Schemas left by an interrupted earlier run.
    psql(server.dsn, _DROP_TEST_SCHEMAS)
    yield server
    psql(server.dsn, _DROP_TEST_SCHEMAS)
    server.stop()


_DROP_TEST_SCHEMAS = """
DO $$ DECLARE s text; BEGIN
  FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'aftercall_test_%' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
END $$;
"""


@pytest.fixture
def pg_schema(postgres: PostgresServer) -> Iterator[str]:
    """A fresh schema name for one test; the store creates it, the fixture drops it."""
    schema = f"aftercall_test_{uuid.uuid4().hex[:12]}"
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

    schema = f"aftercall_test_{uuid.uuid4().hex[:12]}"
    try:
        async with open_postgres_store(postgres.dsn, schema=schema) as pg_store:
            yield pg_store
    finally:
        psql(postgres.dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
