"""A webhook's append gives up before Twilio does (web.context.append_in_time).

The PostgreSQL store is reached through a TCP relay the test can stall, as a network
partition or a hung server would: bytes stop flowing both ways and no error comes. The
append must then end as StoreUnavailable (a 503) within its budget, and an append that
was given up and lands once the relay flows again is a no-op when delivered again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import attrs
import pytest
import trio

from events.codec import to_new_event
from events.conversation import MessageReceived, inbound_event_id, phone_stream
from events.postgres import open_postgres_store
from events.postgres_bridge import PostgresOptions
from events.store import StoreUnavailable
from tests.postgres_server import PostgresServer, new_schema_name, psql
from web.context import append_in_time


@attrs.define(eq=False)
class Relay:
    """Forwards TCP both ways to ``target`` until stalled; then holds every byte."""

    target: tuple[str, int]
    flowing: trio.Event = attrs.field(factory=trio.Event)

    def stall(self) -> None:
        self.flowing = trio.Event()

    def flow(self) -> None:
        self.flowing.set()

    async def handle(self, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream(*self.target) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        """One direction; its end (EOF, a reset) ends both, as closing a socket would."""
        try:
            async for data in source:
                await self.flowing.wait()
                await sink.send_all(data)
        except trio.BrokenResourceError:
            pass
        both.cancel()


@asynccontextmanager
async def relayed(dsn: str) -> AsyncIterator[tuple[Relay, str]]:
    parts = urlsplit(dsn)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    relay.flow()
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, relay.handle, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{port}"
        relayed_dsn = urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )
        yield relay, relayed_dsn
        relay.flow()
        nursery.cancel_scope.cancel()


def _message(sid: str) -> MessageReceived:
    return MessageReceived(
        message_sid=sid, phone="+15551230001", body="hello", received_at=datetime.now(UTC)
    )


async def test_a_stalled_database_is_a_503_within_the_budget_and_nothing_doubles(
    postgres: PostgresServer,
) -> None:
    schema = new_schema_name()
    try:
        async with (
            relayed(postgres.dsn) as (relay, dsn),
            open_postgres_store(dsn, PostgresOptions(schema=schema)) as store,
        ):
            sid = "SM" + "c" * 32
            event = to_new_event(_message(sid), event_id=inbound_event_id(sid))
            stream = phone_stream("+15551230001")
            relay.stall()
            started = trio.current_time()
            with pytest.raises(StoreUnavailable, match=r"within 0\.5 s"):
                await append_in_time(store, stream, [event], budget=0.5)
            assert trio.current_time() - started < 2.0
            relay.flow()
            # Twilio's redelivery of the same message: recorded once, whichever landed.
            with trio.fail_after(30):
                await append_in_time(store, stream, [event], budget=20)
                records = await store.read_stream(stream)
        assert [r.event_id for r in records].count(event.event_id) == 1
    finally:
        psql(postgres.dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
