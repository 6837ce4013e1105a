"""Query plans of the read models on PostgreSQL: rows are found by index, not by scanning
the table and comparing every row with every key (Message DB's habit: prove the plan)."""

from __future__ import annotations

from typing import Any

import pytest

from events.postgres import open_postgres_store
from events.postgres_bridge import Connection, PostgresOptions
from projections.metrics import METRICS
from projections.postgres import PostgresReadModels, delete_sql, load_sql
from projections.runner import ALL_PROJECTIONS
from tests.postgres_server import PostgresServer

KEYS = 800


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
async def test_a_page_finds_its_rows_by_index_even_when_statistics_are_stale(
    postgres: PostgresServer, pg_schema: str, plan_mode: str
) -> None:
    """The table was analysed when it was small and has grown since (a new deployment, a
    busy hour between analyses): what the planner believed when ``key = ANY($1)`` turned
    a page's load into a scan comparing each row with each of its hundreds of keys."""
    [table] = [t for t in METRICS.tables if t.name == "metric_messages"]
    async with open_postgres_store(postgres.dsn, PostgresOptions(schema=pg_schema)) as store:
        models = PostgresReadModels(store.database)
        await models.prepare(ALL_PROJECTIONS)

        async def plans(conn: Connection) -> list[str]:
            insert = (
                "INSERT INTO metric_messages (message_id, phone, direction, status) "
                "SELECT 'm' || g, '+1555', 'out', 'sent' FROM generate_series($1::int, $2) g"
            )
            await conn.execute(insert, 1, 20)
            await conn.execute("ANALYZE metric_messages")
            await conn.execute(insert, 21, 6000)
            keys = [f"m{i}" for i in range(1, KEYS * 7, 7)]
            await conn.execute(f"SET plan_cache_mode = {plan_mode}")
            try:
                found: list[str] = []
                for sql in (load_sql(table, ""), delete_sql(table, "")):
                    rows: list[Any] = await conn.fetch("EXPLAIN " + sql, keys)
                    found.append("\n".join(str(row[0]) for row in rows))
                return found
            finally:
                await conn.execute("RESET plan_cache_mode")

        for plan in await store.database.run(plans):
            assert "ANY" not in plan, plan
            assert "Index Scan using metric_messages_pkey" in plan or "Hash" in plan, plan
