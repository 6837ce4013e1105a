"""Helpers for projection tests: read models on the test's store, table snapshots."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing

from aftercall.storage import open_read_models
from events.store import EventStore
from projections.model import Projection
from projections.readmodels import ReadModels
from projections.runner import ALL_PROJECTIONS


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """The test's Trio clock: it jumps to the next deadline once every task has waited
    0.1 s of real time, so a backoff of seconds passes in a blink and no test sleeps.

    Not pytest-trio's ``autojump_clock`` (which jumps at once): that also jumps while
    PostgreSQL is answering, to the connect timeout of a connection being opened.
    """
    return trio.testing.MockClock(autojump_threshold=0.1)


@contextmanager
def real_time_limit(seconds: float = 60) -> Iterator[None]:
    """Fail the block after ``seconds`` of real time.

    Under the mock clock a ``trio.fail_after`` is no guard: with nothing else due, the
    clock jumps straight to it while a database answers. A thread's timer is.
    """
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:
        timer = threading.Timer(seconds, lambda: token.run_sync_soon(scope.cancel))
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
    if scope.cancelled_caught:
        pytest.fail(f"still running after {seconds} s of real time")


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
