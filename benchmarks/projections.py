"""Projection benchmark: rebuild rate and live lag on PostgreSQL.

    .venv/bin/python benchmarks/projections.py [--events 1000000] [--rate 500] [--seconds 30]
        [--schema aftercall_bench_1m]

1. Seeds a fresh schema with ``--events`` events of realistic follow-up conversations
   (tests/projections/workload.py: calls, first messages, statuses in and out of order,
   agent turns, fallbacks, failures), appended through the event store by 64 concurrent
   writers, each conversation in a few appends.
2. Rebuilds every projection (history, conversations, metrics) from position 0 aside and
   swaps it in: events per second over the whole log, one read of the log feeding all three.
3. Follows live while appending ``--rate`` single-event appends per second for
   ``--seconds``: the lag of each event from the start of its append to the moment all
   three read models have projected it (checkpoint committed), p50 and p99.

Floors (issue 7): 20,000 events per second rebuilt; p99 live lag under 1 second.
``DATABASE_URL`` (default: the local server's ``test`` database); the schema is dropped
at the end, unless ``--schema`` names it: then it is kept, and a later run with the same
``--schema`` reuses its seeded log (seeding a million events takes minutes; the rebuild
being measured takes seconds). A reused log is put back as it was seeded: the events the
last run's live phase appended are deleted, and so are the read models and checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import trio

from events.postgres_bridge import PostgresOptions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aftercall.storage import open_read_models
from events.postgres import PostgresEventStore, open_postgres_store
from events.store import EventStore, NewEvent
from projections.queries import percentile
from projections.readmodels import CHECKPOINTS, REBUILD_SUFFIX
from projections.runner import ALL_PROJECTIONS, ProjectionRunner, rebuild
from tests.projections.workload import Append, conversation

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: Where a kept schema remembers what was seeded into it (one row).
SEEDED = "bench_seeded"
FLOOR_REBUILD = 20_000
FLOOR_LAG_P99 = 1.0


def chunked(appends: list[Append], size: int) -> list[Append]:
    """Consecutive appends to one stream joined, ``size`` at most: fewer, larger appends."""
    joined: list[Append] = []
    for append in appends:
        last = joined[-1] if joined else None
        if last is not None and last.stream == append.stream and len(last.events) < size:
            joined[-1] = Append(last.stream, last.events + append.events)
        else:
            joined.append(append)
    return joined


async def seed(store: EventStore, events: int, seed_: int = 1) -> tuple[int, int]:
    """Append conversations until ``events`` are in the log; returns (events, phones)."""
    written = 0
    phone = 0
    started = time.perf_counter()
    send, receive = trio.open_memory_channel[Append](1000)

    async def writer() -> None:
        async for append in receive:
            await store.append(append.stream, list(append.events))

    async with trio.open_nursery() as nursery:
        for _ in range(64):
            nursery.start_soon(writer)
        async with send:
            while written < events:
                for append in chunked(conversation(seed_, phone), 8):
                    await send.send(append)
                    written += len(append.events)
                phone += 1
                if phone % 5000 == 0:
                    rate = written / (time.perf_counter() - started)
                    print(f"  seeded {written:,} events ({rate:,.0f}/s)", file=sys.stderr)
        send.close()
    return written, phone


async def live_lag(
    store: EventStore, runner: ProjectionRunner, rate: float, seconds: float, first_phone: int
) -> list[float]:
    """Single-event appends at ``rate``; each one's time until every read model has it."""
    pending: list[tuple[int, float]] = []  # (position, append started)
    lags: list[float] = []
    done = trio.Event()

    def events() -> list[tuple[str, NewEvent]]:
        out: list[tuple[str, NewEvent]] = []
        phone = first_phone
        while len(out) < rate * seconds:
            for append in conversation(99, phone):
                out += [(append.stream, event) for event in append.events]
            phone += 1
        return out[: int(rate * seconds)]

    planned = events()
    by_stream_lock: dict[str, trio.Lock] = {}

    async def append_one(stream: str, event: NewEvent) -> None:
        lock = by_stream_lock.setdefault(stream, trio.Lock())
        async with lock:  # one writer per stream, in order (trio's Lock is fair)
            started = trio.current_time()
            result = await store.append(stream, [event])
        pending.append((result.position, started))

    async def watch() -> None:
        while not (done.is_set() and not pending):
            visible = min(runner.positions().values())
            now = trio.current_time()
            keep = []
            for position, started in pending:
                if position <= visible:
                    lags.append(now - started)
                else:
                    keep.append((position, started))
            pending[:] = keep
            # Woken by the runner the moment a page commits; the timeout only covers an
            # append whose answer came after its page was already projected.
            with trio.move_on_after(0.05):
                await runner.wait_until(visible + 1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        async with trio.open_nursery() as appenders:
            start = trio.current_time()
            for index, (stream, event) in enumerate(planned):
                await trio.sleep_until(start + index / rate)
                appenders.start_soon(append_one, stream, event)
        done.set()
    return lags


async def reuse(store: PostgresEventStore, events: int) -> int | None:
    """The phones of a log seeded by an earlier run with ``--schema``, put back as it was
    seeded; None if nothing was seeded here yet."""
    database = store.database
    if not await database.fetchval("SELECT to_regclass($1) IS NOT NULL", SEEDED):
        return None
    row = await database.fetchrow(f"SELECT events, phones, head FROM {SEEDED}")
    if row is None:
        return None
    if row["events"] != events:
        raise SystemExit(
            f"schema {store.log.schema} was seeded with {row['events']:,} events, not"
            f" {events:,}: pass --events {row['events']} or another --schema"
        )
    await database.execute("DELETE FROM events WHERE position > $1", row["head"])
    for projection in ALL_PROJECTIONS:
        for table in projection.tables:
            for suffix in ("", REBUILD_SUFFIX):
                await database.execute(f"DROP TABLE IF EXISTS {table.name}{suffix}")
    await database.execute(f"DROP TABLE IF EXISTS {CHECKPOINTS}")
    await database.execute("VACUUM ANALYZE events")
    return int(row["phones"])


async def main(args: argparse.Namespace) -> int:
    dsn = os.environ.get("DATABASE_URL") or DEFAULT_DSN
    schema = args.schema or f"aftercall_bench_{uuid.uuid4().hex[:10]}"
    reused = None
    if args.schema:
        # A store of its own: the one measured below must not remember the deleted head.
        async with open_postgres_store(dsn, PostgresOptions(schema=schema, pool_size=1)) as store:
            reused = await reuse(store, args.events)
    async with open_postgres_store(dsn, PostgresOptions(schema=schema, pool_size=8)) as store:
        try:
            async with open_read_models(store) as models:
                if reused is not None:
                    phones = reused
                    print(f"reusing the {args.events:,} events in schema {schema}", file=sys.stderr)
                else:
                    print(
                        f"seeding {args.events:,} events into schema {schema} ...", file=sys.stderr
                    )
                    t0 = time.perf_counter()
                    events, phones = await seed(store, args.events)
                    print(
                        f"seeded {events:,} events for {phones:,} phones in"
                        f" {time.perf_counter() - t0:.0f} s",
                        file=sys.stderr,
                    )
                    if args.schema:
                        await store.database.execute(
                            f"CREATE TABLE {SEEDED} (events bigint, phones bigint, head bigint)"
                        )
                        await store.database.execute(
                            f"INSERT INTO {SEEDED} VALUES ($1, $2, $3)",
                            args.events,
                            phones,
                            await store.head(),
                        )
                await models.prepare([])
                cpu = time.process_time()
                report = await rebuild(store, models)
                cpu = time.process_time() - cpu
                runner = ProjectionRunner(store, models)
                async with trio.open_nursery() as nursery:
                    await nursery.start(runner.run)
                    await runner.wait_until(await store.head())
                    lags = sorted(
                        await live_lag(store, runner, args.rate, args.seconds, phones + 1)
                    )
                    nursery.cancel_scope.cancel()
        finally:
            if not args.schema:
                await store.database.execute(f'DROP SCHEMA "{schema}" CASCADE')

    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    rate_ok = report.events_per_second >= FLOOR_REBUILD
    lag_ok = p99 < FLOOR_LAG_P99
    print()
    print("| measure | result | floor |")
    print("|---|---|---|")
    print(
        f"| rebuild (3 read models, {report.events:,} events) |"
        f" {report.events_per_second:,.0f} events/s in {report.seconds:.1f} s"
        f" (client CPU {cpu / report.events * 1e6:.0f} us/event) |"
        f" {FLOOR_REBUILD:,} events/s {'ok' if rate_ok else 'MISSED'} |"
    )
    print(
        f"| live lag, {args.rate:g} appends/s for {args.seconds:g} s ({len(lags):,} events) |"
        f" p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms |"
        f" p99 < {FLOOR_LAG_P99 * 1000:.0f} ms {'ok' if lag_ok else 'MISSED'} |"
    )
    return 0 if rate_ok and lag_ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=500.0, help="appends per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--schema",
        help="keep the seeded log in this schema and reuse it in later runs (not dropped)",
    )
    sys.exit(trio.run(main, parser.parse_args()))
