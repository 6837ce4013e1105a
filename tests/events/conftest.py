"""PostgreSQL fixtures for the event store's own tests.

Each test gets a fresh schema and an ``application_name`` of its own, so terminating
"every aftercall connection" of a test never touches the connections of another test or
of another engineer's run.

``pg_schema`` is overridden here: the session fixture in tests/conftest.py drops every
``aftercall_test_%`` schema when a session starts and ends, which removes the schemas of
any *other* pytest run on the same server mid-test. These schemas carry the pid of the
run that made them instead, and only those of runs that are gone are swept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import trio

from events.postgres import PostgresEventStore, open_postgres_store
from events.postgres_bridge import PostgresOptions
from tests.postgres_server import PostgresServer, new_schema_name, psql, sweep_dead_schemas

Terminate = Callable[..., Awaitable[int]]


SCHEMA_PREFIX = "aftercall_pg_"


@pytest.fixture(scope="session")
def _swept(postgres: PostgresServer) -> None:
    """Drop the schemas left by earlier runs of these tests that were interrupted."""
    sweep_dead_schemas(postgres.dsn, SCHEMA_PREFIX)


@pytest.fixture
def pg_schema(postgres: PostgresServer, _swept: None) -> Iterator[str]:
    """A fresh schema name for one test; the store creates it, the fixture drops it."""
    schema = new_schema_name(SCHEMA_PREFIX)
    yield schema
    psql(postgres.dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> str:
    return postgres.dsn


@pytest.fixture
def pg_app(pg_schema: str) -> str:
    """The application_name this test's stores connect with."""
    return f"aftercall-{pg_schema}"


@pytest.fixture
async def pg_store(pg_dsn: str, pg_schema: str, pg_app: str) -> AsyncIterator[PostgresEventStore]:
    async with open_postgres_store(
        pg_dsn,
        PostgresOptions(schema=pg_schema, application_name=pg_app, pool_size=4),
        fallback_interval=0.2,
    ) as store:
        yield store


@pytest.fixture
def terminate(pg_dsn: str) -> Terminate:
    """``await terminate(application_name, extra_condition="")``: kill those backends.

    Runs psql in a thread so the Trio loop (and the asyncio loop on it) keeps running and
    sees its sockets close. Returns how many backends were signalled.
    """

    async def run(application_name: str, extra_condition: str = "") -> int:
        sql = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name = '{application_name}' {extra_condition}"
        )
        out = await trio.to_thread.run_sync(psql, pg_dsn, sql)
        return int(out.strip())

    return run
