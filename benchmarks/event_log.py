"""How fast the PostgreSQL event log appends and catches up, next to plain asyncpg.

    .venv/bin/python -m benchmarks.event_log [--dsn postgresql://...] [--quick]

For 1, 10 and 100 concurrent writers (each appending single events to its own stream,
with an expected version, every append durable before it returns) it prints appends per
second and p50/p99 append latency of the group-committed store, and beside them a
baseline measured in the same run by a separate pure-asyncio process
(``benchmarks._asyncpg_baseline``: asyncpg, pool of 20, one INSERT per transaction).
The floor the store is held to: with 100 writers, at least 3x the baseline.

Each row is ``--repeats`` rounds (default 3), the store and the baseline taking turns, so
that a burst of load from elsewhere on the machine falls on both; the table shows each
side's median round, and the ratio of the medians. ``cpu us`` is the client process's CPU
time per append (user + system): unlike the rate, it hardly moves with the machine's load.

Then it loads ``--catch-up`` events with one COPY (under the log's advisory lock, as
every writer must) and times a cold ``tail`` from position 0 to the head.

The machine is shared and noisy: compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import uuid

import attrs
import trio

from events.postgres import PostgresEventStore, open_postgres_store
from events.postgres_bridge import Connection, PostgresOptions, open_database
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
    cpu: float  # client CPU seconds over the measured window
    batches: int = 0

    @property
    def cpu_per_append(self) -> float:
        return self.cpu / self.appends if self.appends else 0.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _median(rows: list[Row]) -> Row:
    return sorted(rows, key=lambda row: row.rate)[len(rows) // 2]


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[
        min(len(latencies) - 1, int(len(latencies) * 0.99))
    ]


async def _drop(dsn: str, schema: str) -> None:
    async with open_database(dsn, PostgresOptions(pool_size=1)) as database:
        await database.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def measure_store(dsn: str, writers: int, seconds: float) -> Row:
    schema = f"aftercall_bench_{uuid.uuid4().hex[:10]}"
    latencies: list[float] = []
    try:
        async with open_postgres_store(dsn, PostgresOptions(schema=schema, pool_size=4)) as store:
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
            cpu_started = _cpu_seconds()
            batches_before = store.statistics().batches
            async with trio.open_nursery() as nursery:
                for index in range(writers):
                    nursery.start_soon(writer, index)
            elapsed = time.perf_counter() - started
            cpu = _cpu_seconds() - cpu_started
            batches = store.statistics().batches - batches_before
    finally:
        await _drop(dsn, schema)
    p50, p99 = _percentiles(latencies)
    return Row(writers, len(latencies), len(latencies) / elapsed, p50, p99, cpu, batches)


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
    return Row(
        writers, figures["appends"], figures["rate"], figures["p50"], figures["p99"], figures["cpu"]
    )


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
        async with open_postgres_store(dsn, PostgresOptions(schema=schema, pool_size=4)) as store:
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


@attrs.frozen
class Measured:
    """One writer count: every round of each side, store first in each round."""

    store: list[Row]
    baseline: list[Row]

    @property
    def ratio(self) -> float:
        return _median(self.store).rate / _median(self.baseline).rate


def _print_table(rows: list[Measured]) -> None:
    print(
        f"{'writers':>7} | {'group commit/s':>14} {'p50 ms':>7} {'p99 ms':>7} {'ev/batch':>8}"
        f" {'cpu us':>6} | {'asyncpg/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu us':>6}"
        f" | {'ratio':>5} | rounds"
    )
    for measured in rows:
        store, base = _median(measured.store), _median(measured.baseline)
        per_batch = store.appends / store.batches if store.batches else 0.0
        rounds = " ".join(
            f"{s.rate / b.rate:.1f}x"
            for s, b in zip(measured.store, measured.baseline, strict=True)
        )
        print(
            f"{store.writers:>7} | {store.rate:>14,.0f} {store.p50 * 1e3:>7.2f}"
            f" {store.p99 * 1e3:>7.2f} {per_batch:>8.1f} {store.cpu_per_append * 1e6:>6.0f}"
            f" | {base.rate:>9,.0f} {base.p50 * 1e3:>7.2f} {base.p99 * 1e3:>7.2f}"
            f" {base.cpu_per_append * 1e6:>6.0f}"
            f" | {measured.ratio:>4.1f}x | {rounds}"
        )


async def run(
    dsn: str, seconds: float, writer_counts: list[int], catch_up: int, repeats: int
) -> int:
    rows = []
    for writers in writer_counts:
        measured = Measured([], [])
        for _ in range(repeats):
            measured.store.append(await measure_store(dsn, writers, seconds))
            measured.baseline.append(await measure_baseline(dsn, writers, seconds))
        rows.append(measured)
    print(
        f"appends, {seconds:g} s per round, median of {repeats} round(s) each side,"
        " every append durable (synchronous_commit=on)"
    )
    _print_table(rows)
    loaded, rate = await measure_catch_up(dsn, catch_up)
    print(
        f"catch-up: {catch_up:,} events loaded with COPY in {loaded:.2f} s;"
        f" a cold tail read them at {rate:,.0f} events/s"
    )
    top = [measured for measured in rows if measured.store[0].writers == 100]
    if top and top[0].ratio < FLOOR:
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
    parser.add_argument("--repeats", type=int, default=3, help="rounds per row (default 3)")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    writers = [int(n) for n in args.writers.split(",")]
    try:
        status = trio.run(run, args.dsn, seconds, writers, args.catch_up, max(1, args.repeats))
    except subprocess.CalledProcessError as exc:
        print(f"the asyncpg baseline failed (exit {exc.returncode})", file=sys.stderr)
        status = 2
    sys.exit(status)


if __name__ == "__main__":
    main()
