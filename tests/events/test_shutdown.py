"""Shutting down by cancellation: the last appends still commit.

When the service is cancelled (Hypercorn's graceful timeout, Ctrl-C), actors deactivate in
shielded sections and record that they closed their agent sessions. The store's writer is
cancelled with everything else unless it shields itself; it does, and stops only when the
store closes it.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from events.postgres import open_postgres_store
from events.postgres_bridge import PostgresOptions
from events.sqlite import open_sqlite_store
from events.store import AppendResult, NewEvent
from tests.postgres_server import PostgresServer, new_schema_name, psql


async def test_sqlite_writer_outlives_a_cancelled_owner(tmp_path: Path) -> None:
    results: list[AppendResult] = []
    with trio.CancelScope() as service:
        async with open_sqlite_store(tmp_path / "events.sqlite3") as store:
            service.cancel()
            with trio.CancelScope(shield=True):  # an actor's shielded deactivate
                await trio.testing.wait_all_tasks_blocked()  # the cancellation lands first
                results.append(await store.append("phone-+1555", [NewEvent("Closed", {})]))
    assert [r.version for r in results] == [1]


async def test_postgres_writer_outlives_a_cancelled_owner(postgres: PostgresServer) -> None:
    schema = new_schema_name()
    results: list[AppendResult] = []
    try:
        with trio.fail_after(30), trio.CancelScope() as service:
            async with open_postgres_store(postgres.dsn, PostgresOptions(schema=schema)) as store:
                service.cancel()
                with trio.CancelScope(shield=True):
                    await trio.testing.wait_all_tasks_blocked()
                    results.append(await store.append("phone-+1555", [NewEvent("Closed", {})]))
        assert [r.version for r in results] == [1]
    finally:
        psql(postgres.dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
