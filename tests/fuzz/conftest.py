"""The fuzz suite's server (one per module) and its closing table of requests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.live import Server
from tests.fuzz.probe import TALLY, TIMEOUT, Prober
from tests.postgres_server import PostgresServer, new_schema_name, psql


@pytest.fixture(scope="module")
def prober(postgres: PostgresServer) -> Iterator[Prober]:
    """The real app on a real socket, on a PostgreSQL schema of its own."""
    schema = new_schema_name()
    server = Server(postgres.dsn, schema)
    try:
        server.live.url  # noqa: B018 - start it now, not in the first example
        yield Prober(server)
    finally:
        try:
            server.close()
        finally:
            psql(postgres.dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY.total():
        return
    terminalreporter.section("fuzz: requests by route and outcome")
    terminalreporter.write_line(
        f"(timeout: no answer within {TIMEOUT:.0f} s; closed: the connection closed without an "
        "answer)"
    )
    for line in TALLY.table().splitlines():
        terminalreporter.write_line(line)
