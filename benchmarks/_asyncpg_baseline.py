"""The baseline for ``benchmarks.event_log``: plain asyncpg in a pure asyncio process.

A pool of 20 connections; each writer task appends single events to its own stream,
one INSERT per transaction (autocommit), into a table shaped like the event log. It runs
in its own process so that neither trio nor trio-asyncio is imported: this is what the
same machine does without the bridge and without group commit. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid

import asyncpg

TABLE = """
CREATE TABLE events (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream      text        NOT NULL,
    category    text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb       NOT NULL,
    event_id    uuid        NOT NULL UNIQUE,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream, version)
);
CREATE INDEX events_category_position ON events (category, position);
"""

INSERT = (
    "INSERT INTO events (stream, category, version, type, data, metadata, event_id)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
)


async def measure(dsn: str, schema: str, writers: int, seconds: float) -> dict[str, float]:
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await setup.execute(f'CREATE SCHEMA "{schema}"')
        await setup.execute(f'SET search_path = "{schema}"; {TABLE}')
    finally:
        await setup.close()
    pool = await asyncpg.create_pool(
        dsn,
        min_size=20,
        max_size=20,
        server_settings={"search_path": f'"{schema}"', "synchronous_commit": "on"},
    )
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def writer(index: int) -> None:
        stream = f"bench-w{index}"
        version = 0
        while time.perf_counter() < deadline:
            version += 1
            data = json.dumps({"text": "hello", "n": version}, separators=(",", ":"))
            started = time.perf_counter()
            await pool.execute(
                INSERT, stream, "bench", version, "Benchmarked", data, "{}", uuid.uuid4()
            )
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    cpu_started = _cpu_seconds()
    try:
        await asyncio.gather(*(writer(i) for i in range(writers)))
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_started
    finally:
        await pool.close()
        setup = await asyncpg.connect(dsn)
        await setup.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await setup.close()
    latencies.sort()
    return {
        "appends": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "cpu": cpu,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--writers", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    result = asyncio.run(measure(args.dsn, args.schema, args.writers, args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
