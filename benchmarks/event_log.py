"""How fast the PostgreSQL event log appends and catches up, next to plain asyncpg.

    .venv/bin/python -m benchmarks.event_log [--dsn postgresql://...] [--quick]

For 1, 10 and 100 concurrent writers (each appending single events to its own stream,
with an expected version, every append durable before it returns) it prints appends per
second and p50/p99 append latency of the group-committed store, and beside them a
baseline measured in the same run by a separate pure-asyncio process
(``benchmarks._asyncpg_baseline``: asyncpg, pool of 20, one INSERT per transaction).
The floor the store is held to: with 100 writers, at least 3x the baseline.

Then it loads ``--catch-up`` events with one COPY (under the log's advisory lock, as
every writer must) and times a cold ``tail`` from position 0 to the head.

The machine is shared and noisy: compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid

import attrs
import trio

from events.postgres import Connection, PostgresEventStore, open_database, open_postgres_store
from events.store import NewEvent, tail

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
FLOOR = 3.0


@attrs.frozen
class Row:
    writers: int
    appends: int
    rate: float
    p50: float
    p99: float
    batches: int = 0


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[
        min(len(latencies) - 1, int(len(latencies) * 0.99))
    ]


async def _drop(dsn: str, schema: str) -> None:
    async with open_database(dsn, pool_size=1) as database:
        await database.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def measure_store(dsn: str, writers: int, seconds: float) -> Row:
    schema = f"aftercall_bench_{uuid.uuid4().hex[:10]}"
    latencies: list[float] = []
    try:
        async with open_postgres_store(dsn, schema=schema, pool_size=4) as store:
            deadline = time.perf_counter() + seconds

            async def writer(index: int) -> None:
                stream = f"bench-w{index}"
                version = 0
                while time.perf_counter() < deadline:
                    event = NewEvent("Benchmarked", {"text": "hello", "n": version + 1})
                    started = time.perf_counter()
                    await store.append(stream, [event], expected_version=version)
                    latencies.append(time.perf_counter() - started)
                    version += 1

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for index in range(writers):
                    nursery.start_soon(writer, index)
            elapsed = time.perf_counter() - started
            batches = store.statistics().batches
    finally:
        await _drop(dsn, schema)
    p50, p99 = _percentiles(latencies)
    return Row(writers, len(latencies), len(latencies) / elapsed, p50, p99, batches)


async def measure_baseline(dsn: str, writers: int, seconds: float) -> Row:
    schema = f"aftercall_bench_{uuid.uuid4().hex[:10]}"
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "benchmarks._asyncpg_baseline",
            "--dsn",
            dsn,
            "--schema",
            schema,
            "--writers",
            str(writers),
            "--seconds",
            str(seconds),
        ],
        capture_stdout=True,
    )
    figures = json.loads(result.stdout)
    return Row(writers, figures["appends"], figures["rate"], figures["p50"], figures["p99"])


async def _copy_events(conn: Connection, lock_sql: str, count: int) -> None:
    await conn.execute(lock_sql)  # nothing inserts into the log without the lock
    data = json.dumps({"text": "hello, this is a message of ordinary length", "n": 1})
    records = [
        (f"catchup-{i % 1000}", "catchup", i // 1000 + 1, "Loaded", data, "{}", uuid.uuid4())
        for i in range(count)
    ]
    await conn.copy_records_to_table(
        "events",
        records=records,
        columns=["stream", "category", "version", "type", "data", "metadata", "event_id"],
    )


async def measure_catch_up(dsn: str, count: int) -> tuple[float, float]:
    """(seconds to load with COPY, events per second a cold tail reads to the head)."""
    schema = f"aftercall_bench_{uuid.uuid4().hex[:10]}"
    try:
        async with open_postgres_store(dsn, schema=schema, pool_size=4) as store:
            started = time.perf_counter()
            await store.database.transaction(_copy_events, store.log.lock_sql, count)
            loaded = time.perf_counter() - started
            head = await store.head()
            rate = await _time_tail(store, head, count)
    finally:
        await _drop(dsn, schema)
    return loaded, rate


async def _time_tail(store: PostgresEventStore, head: int, count: int) -> float:
    seen = 0
    started = time.perf_counter()
    async for event in tail(store, after=0):
        seen += 1
        if event.position >= head:
            break
    elapsed = time.perf_counter() - started
    assert seen == count, f"the tail saw {seen} of {count} events"
    return seen / elapsed


def _print_table(rows: list[tuple[Row, Row]]) -> None:
    print(
        f"{'writers':>7} | {'group commit/s':>14} {'p50 ms':>7} {'p99 ms':>7} {'ev/batch':>8}"
        f" | {'asyncpg/s':>9} {'p50 ms':>7} {'p99 ms':>7} | {'ratio':>5}"
    )
    for store, base in rows:
        per_batch = store.appends / store.batches if store.batches else 0.0
        print(
            f"{store.writers:>7} | {store.rate:>14,.0f} {store.p50 * 1e3:>7.2f}"
            f" {store.p99 * 1e3:>7.2f} {per_batch:>8.1f}"
            f" | {base.rate:>9,.0f} {base.p50 * 1e3:>7.2f} {base.p99 * 1e3:>7.2f}"
            f" | {store.rate / base.rate:>5.1f}x"
        )


async def run(dsn: str, seconds: float, writer_counts: list[int], catch_up: int) -> int:
    rows = []
    for writers in writer_counts:
        store = await measure_store(dsn, writers, seconds)
        base = await measure_baseline(dsn, writers, seconds)
        rows.append((store, base))
    print(f"appends, {seconds:g} s per row, every append durable (synchronous_commit=on)")
    _print_table(rows)
    loaded, rate = await measure_catch_up(dsn, catch_up)
    print(
        f"catch-up: {catch_up:,} events loaded with COPY in {loaded:.2f} s;"
        f" a cold tail read them at {rate:,.0f} events/s"
    )
    top = [pair for pair in rows if pair[0].writers == 100]
    if top and top[0][0].rate < FLOOR * top[0][1].rate:
        print(f"BELOW THE FLOOR: 100 writers must reach {FLOOR:g}x the baseline")
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Event log benchmark", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL URL (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 s per row, 200,000 events")
    parser.add_argument("--seconds", type=float, default=None, help="per row (default 5)")
    parser.add_argument("--writers", default="1,10,100", help="comma-separated writer counts")
    parser.add_argument("--catch-up", type=int, default=200_000, help="events for the tail")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    writers = [int(n) for n in args.writers.split(",")]
    try:
        status = trio.run(run, args.dsn, seconds, writers, args.catch_up)
    except subprocess.CalledProcessError as exc:
        print(f"the asyncpg baseline failed (exit {exc.returncode})", file=sys.stderr)
        status = 2
    sys.exit(status)


if __name__ == "__main__":
    main()
