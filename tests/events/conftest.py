"""PostgreSQL fixtures for the event store's own tests.

Each test gets a fresh schema (``pg_schema`` from tests/conftest.py drops it) and an
``application_name`` of its own, so terminating "every aftercall connection" of a test
never touches the connections of another test or of another engineer's run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from events.postgres import PostgresEventStore, open_postgres_store
from tests.postgres_server import PostgresServer, psql

Terminate = Callable[..., Awaitable[int]]


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
        pg_dsn, schema=pg_schema, application_name=pg_app, pool_size=4, fallback_interval=0.2
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
