"""The ordering proof: a tailing reader sees every event exactly once, in a stable order.

The trap (architecture note, "The event log"): a sequence value is taken at insert but
becomes visible at commit, so with concurrent writers a later position can commit first,
and a reader that checkpoints the last position it saw skips the earlier one for good.

Writers here are independent transactions on separate connections, as separate processes
would be: each runs the store's own batch SQL (`write_batch_sql`, through
`PostgresEventStore.commit_batch`) on a connection of its own, and sleeps inside
PostgreSQL (``pg_sleep``) after taking its positions and before COMMIT. The second test
runs the same scenario with writers that skip the advisory lock, and shows the reader
missing events: the first test could fail.
"""

from __future__ import annotations

import random
import uuid
from contextlib import AsyncExitStack

import attrs
import trio

from events._group_commit import AppendRequest
from events.postgres import PostgresEventStore, _WriterConnection, open_postgres_store
from events.postgres_bridge import Connection, PostgresOptions
from events.store import NewEvent, RecordedEvent, encode_payloads, tail

WRITERS = 24
BATCHES_PER_WRITER = 3
ROUNDS = 5
MAX_COMMIT_DELAY = 0.004  # seconds, inside PostgreSQL, after positions are taken


def _request(stream: str, count: int) -> AppendRequest:
    events = [NewEvent("Ordered", {"stream": stream, "i": i}) for i in range(count)]
    return AppendRequest(stream, events, None, encode_payloads(stream, events))


@attrs.define
class Round:
    written: set[uuid.UUID] = attrs.field(factory=set)
    seen: list[RecordedEvent] = attrs.field(factory=list)


async def _safe_writer(
    store: PostgresEventStore,
    writer: _WriterConnection,
    round_no: int,
    index: int,
    rng: random.Random,
    result: Round,
) -> None:
    for batch_no in range(BATCHES_PER_WRITER):
        # Two requests per batch, like a group commit gathering two callers.
        batch = [
            _request(f"order-r{round_no}w{index}", 1 + batch_no % 2),
            _request(f"order-r{round_no}w{index}b", 1),
        ]
        await store.commit_batch(
            batch, writer=writer, commit_delay=rng.uniform(0, MAX_COMMIT_DELAY)
        )
        result.written.update(e.event_id for r in batch for e in r.events)


async def test_tailing_reader_sees_every_event_once_in_a_stable_order(
    pg_dsn: str, pg_schema: str, pg_app: str
) -> None:
    rng = random.Random(20240611)
    async with (
        open_postgres_store(
            pg_dsn, PostgresOptions(schema=pg_schema, application_name=pg_app, pool_size=3)
        ) as store,
        AsyncExitStack() as stack,
    ):
        # One connection per writer, opened once: connecting is not what is under test.
        connections = [
            await stack.enter_async_context(store.separate_writer()) for _ in range(WRITERS)
        ]
        for round_no in range(ROUNDS):
            start = await store.head()
            with trio.fail_after(30):
                result = await _run_round(store, connections, round_no, rng, start)
            seen_ids = [e.event_id for e in result.seen]
            assert len(seen_ids) == len(set(seen_ids)), "an event was delivered twice"
            assert set(seen_ids) == result.written, f"round {round_no}: events were skipped"
            positions = [e.position for e in result.seen]
            assert positions == sorted(positions)
            # Stable: reading the same range again gives the very same sequence.
            again = await store.read_all(after=start, limit=10_000)
            assert [e.event_id for e in again] == seen_ids
            for stream in {e.stream for e in result.seen}:
                versions = [e.version for e in result.seen if e.stream == stream]
                assert versions == list(range(1, len(versions) + 1))


async def _run_round(
    store: PostgresEventStore,
    connections: list[_WriterConnection],
    round_no: int,
    rng: random.Random,
    start: int,
) -> Round:
    """All writers at once, and a reader tailing from ``start`` until it reaches the head.

    The reader stops at the head as it stands once every writer is done, so a skipped
    event shows up as a failed comparison, not as a reader waiting forever.
    """
    result = Round()
    final_head: list[int] = []

    async def reader(cancel: trio.CancelScope) -> None:
        async for event in tail(store, after=start, batch=50):
            result.seen.append(event)
            if final_head and event.position >= final_head[0]:
                cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, nursery.cancel_scope)
        async with trio.open_nursery() as writers:
            for index, writer in enumerate(connections):
                writers.start_soon(_safe_writer, store, writer, round_no, index, rng, result)
        final_head.append(await store.head())
        # Had the reader reached it already, it is parked in the tail.
        if result.seen and result.seen[-1].position >= final_head[0]:
            nursery.cancel_scope.cancel()
    return result


async def _naive_batch(conn: Connection, stream: str, count: int, delay: float) -> list[uuid.UUID]:
    """What the trap looks like: positions taken with no lock, commit delayed."""
    ids = [uuid.uuid4() for _ in range(count)]
    async with conn.transaction():
        for version, event_id in enumerate(ids, 1):
            await conn.execute(
                "INSERT INTO events (stream, category, version, type, data, metadata, event_id)"
                " VALUES ($1, 'naive', $2, 'Naive', '{}', '{}', $3)",
                stream,
                version,
                event_id,
            )
        await conn.execute("SELECT pg_sleep($1)", delay)
    return ids


async def test_without_the_lock_a_tailing_reader_misses_events(
    pg_dsn: str, pg_schema: str, pg_app: str
) -> None:
    """The same writers minus the advisory lock: late commits are skipped for good."""
    rng = random.Random(7)
    written: set[uuid.UUID] = set()
    seen: set[uuid.UUID] = set()
    async with open_postgres_store(
        pg_dsn, PostgresOptions(schema=pg_schema, application_name=pg_app, pool_size=WRITERS + 2)
    ) as store:

        async def writer(index: int) -> None:
            for batch_no in range(BATCHES_PER_WRITER):
                ids = await store.database.run(
                    _naive_batch,
                    f"naive-w{index}b{batch_no}",
                    2,
                    rng.uniform(0, MAX_COMMIT_DELAY * 3),
                )
                written.update(ids)

        async def reader(done: trio.Event) -> None:
            checkpoint = 0
            while True:
                finished = done.is_set()  # read once more after the last commit
                for event in await store.read_all(after=checkpoint):
                    seen.add(event.event_id)
                    checkpoint = event.position
                if finished:
                    return

        with trio.fail_after(30):
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader, done)
                async with trio.open_nursery() as writers:
                    for index in range(WRITERS):
                        writers.start_soon(writer, index)
                done.set()
    assert seen <= written
    assert len(written - seen) > 0, "the naive scenario lost nothing: the proof proves nothing"
