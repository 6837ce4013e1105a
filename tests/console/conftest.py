"""Fixtures of the console tests: the app in sandbox mode, and a browser for the session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from events.store import EventStore
from tests.console.browser import CHROMIUM, BrowserThread
from tests.console.harness import Console, running_console


@pytest.fixture
async def console(store: EventStore, tmp_path: Path) -> AsyncIterator[Console]:
    async with running_console(store, tmp_path) as running:
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[BrowserThread]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does), or set "
            "AFTERCALL_CHROMIUM to a Chromium binary"
        )
    thread = BrowserThread()
    yield thread
    thread.close()
