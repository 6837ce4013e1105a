"""Helpers for projection tests: read models on the test's store, table snapshots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aftercall.storage import open_read_models
from events.store import EventStore
from projections.model import Projection
from projections.readmodels import ReadModels
from projections.runner import ALL_PROJECTIONS


@pytest.fixture
async def models(store: EventStore) -> AsyncIterator[ReadModels]:
    async with open_read_models(store) as read_models:
        yield read_models


async def snapshot(
    models: ReadModels, projections: tuple[Projection, ...] = ALL_PROJECTIONS
) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, in key order, as Python values (comparable across runs)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for projection in projections:
        for table in projection.tables:
            types = {c.name: c.type for c in table.columns}
            tables[table.name] = await models.query(
                f"SELECT * FROM {table.name} ORDER BY {', '.join(table.key)}", types=types
            )
    return tables
