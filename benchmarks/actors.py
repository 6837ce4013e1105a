"""What the actor runtime costs: activations, messages, memory.

    .venv/bin/python -m benchmarks.actors [--dsn postgresql://...] [--sqlite] [--actors N]
                                          [--messages N]

One run, three figures, on one store (PostgreSQL by default; ``--sqlite`` for the embedded
store):

- activation rate: ``--actors`` actors (10,000 by default) are told once each, cold; each
  activation folds its stream of 20 events (read from the store and decoded with the
  codec, as a phone actor folds its stream) and then handles the message. Actors per
  second from the first tell to the last handled message, with the p50/p99 latency of one
  activation (tell to handled).
- resident memory per idle active actor: a fresh child process opens the same store,
  activates all the actors (in waves of 500, as they arrive in a running system) and
  reports how much its RSS grew once they are all idle; the Python heap per actor comes
  from ``tracemalloc`` in a separate pass (its bookkeeping would distort RSS, and a
  process that already ran the other measurements has freed arenas to reuse). No
  sockets: a phone actor's WebSocket comes on top (~23 KiB, docs/stack.md).
- message throughput: ``--messages`` tells spread round-robin over the active actors by
  16 concurrent senders, each message handled (a counter) by its actor.

Floors: all ``--actors`` actors active at once in one process; under 10 KiB per actor
(RSS and heap) without its socket. The exit status is 1 below a floor.

The streams are written before the clock starts and are in PostgreSQL's cache: "cold"
means the actor is not in memory, not that the database is. The machine is shared and
noisy: read the figures as orders of magnitude and ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import attrs
import trio
import trio.testing

from actors import ActorContext, ActorSettings, FoldedStream, open_actor_system
from events import EventStore, decode, event_type, to_new_event
from events.postgres_bridge import PostgresOptions

DEFAULT_DSN = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
EVENTS_PER_STREAM = 20
FLOOR_ACTORS = 10_000
FLOOR_BYTES_PER_ACTOR = 10 * 1024
SENDERS = 16


@event_type
@attrs.frozen
class BenchmarkTallied:
    """The event each benchmark stream holds twenty of."""

    n: int
    note: str


def _stream(index: int) -> str:
    return f"benchactor-{index}"


def _actor_id(index: int) -> str:
    return f"a{index}"


@attrs.define(eq=False)
class Board:
    """What the benchmark's actors report back: handled messages and when."""

    target: int = 0
    handled: int = 0
    done: trio.Event = attrs.Factory(trio.Event)
    told_at: dict[str, float] = attrs.Factory(dict)
    latencies: list[float] = attrs.Factory(list)

    def expect(self, count: int) -> None:
        self.target = self.handled + count
        self.done = trio.Event()

    def handled_one(self) -> None:
        self.handled += 1
        if self.handled >= self.target:
            self.done.set()


@attrs.define(eq=False)
class BenchmarkActor:
    """A minimal event-sourced actor: folds its stream into a total, counts messages."""

    actor_id: str
    board: Board
    stream: FoldedStream | None = None
    total: int = 0
    messages: int = 0

    async def activate(self, ctx: ActorContext[int]) -> None:
        index = int(self.actor_id[1:])
        self.stream = FoldedStream(ctx.store, _stream(index))
        for recorded in await self.stream.read_new():
            event = decode(recorded)
            assert isinstance(event, BenchmarkTallied)
            self.total += event.n

    async def handle(self, message: int, ctx: ActorContext[int]) -> None:
        self.messages += 1
        told = self.board.told_at.pop(self.actor_id, None)
        if told is not None:
            self.board.latencies.append(time.perf_counter() - told)
        self.board.handled_one()

    async def deactivate(self, ctx: ActorContext[int]) -> None:
        self.stream = None


def _factory(board: Board) -> Callable[[str], BenchmarkActor]:
    def make(actor_id: str) -> BenchmarkActor:
        return BenchmarkActor(actor_id, board)

    return make


def rss_bytes() -> int:
    """Resident memory, after handing free heap pages back to the system.

    glibc keeps freed memory for reuse (the read buffers of an activation burst), which
    would count against the actors though it is not theirs; ``malloc_trim`` returns it, so
    what is left is what the process holds on to.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: measure as is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def seed(store: EventStore, actors: int) -> float:
    """Give every actor its stream of 20 events; returns the seconds it took."""
    started = time.perf_counter()
    next_index = 0

    async def writer() -> None:
        nonlocal next_index
        while next_index < actors:
            index = next_index
            next_index += 1
            events = [
                to_new_event(BenchmarkTallied(n, "twenty events make a short conversation"))
                for n in range(EVENTS_PER_STREAM)
            ]
            await store.append(_stream(index), events, expected_version=0)

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(writer)
    return time.perf_counter() - started


@attrs.frozen
class Figures:
    backend: str
    actors: int
    seed_seconds: float
    activation_seconds: float
    activation_p50: float
    activation_p99: float
    rss_per_actor: float
    heap_per_actor: float
    messages: int
    message_seconds: float
    active_at_once: int


async def activate_all(system: Any, board: Board, actors: int) -> float:
    """Tell every actor once (cold) and wait until each has handled it."""
    board.expect(actors)
    started = time.perf_counter()
    for index in range(actors):
        actor_id = _actor_id(index)
        board.told_at[actor_id] = time.perf_counter()
        await system.tell(actor_id, 0)
    await board.done.wait()
    return time.perf_counter() - started


async def idle_heap_per_actor(store: EventStore, actors: int) -> float:
    """Second pass, under tracemalloc: Python heap per idle active actor."""
    board = Board()
    settings = ActorSettings(mailbox_size=16)
    gc.collect()
    tracemalloc.start()
    try:
        async with open_actor_system(_factory(board), store, settings) as system:
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            await activate_all(system, board, actors)
            await trio.testing.wait_all_tasks_blocked()
            board.latencies.clear()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / actors


async def resident_per_actor(store: EventStore, actors: int, wave: int = 500) -> float:
    """RSS growth per actor once ``actors`` actors are active and idle (run in a child)."""
    board = Board()
    async with open_actor_system(_factory(board), store, ActorSettings()) as system:
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        before = rss_bytes()
        for start in range(0, actors, wave):
            end = min(start + wave, actors)
            board.expect(end - start)
            for index in range(start, end):
                system.tell_nowait(_actor_id(index), 0)
            await board.done.wait()
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        after = rss_bytes()
        assert system.statistics().active_actors == actors
    return (after - before) / actors


async def measure(
    store: EventStore, backend: str, actors: int, messages: int, child: list[str]
) -> Figures:
    seed_seconds = await seed(store, actors)
    done = await trio.run_process(
        [sys.executable, "-m", "benchmarks.actors", *child, "--actors", str(actors)],
        capture_stdout=True,
    )
    rss_per_actor = float(done.stdout.decode().strip().splitlines()[-1])

    board = Board()
    async with open_actor_system(_factory(board), store, ActorSettings()) as system:
        activation_seconds = await activate_all(system, board, actors)
        latencies = sorted(board.latencies)
        board.latencies = []
        await trio.testing.wait_all_tasks_blocked()
        active_at_once = system.statistics().active_actors

        board.expect(messages)
        per_sender = messages // SENDERS

        async def sender(offset: int) -> None:
            for k in range(per_sender):
                await system.tell(_actor_id((offset * per_sender + k) % actors), k)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for offset in range(SENDERS):
                nursery.start_soon(sender, offset)
        await board.done.wait()
        message_seconds = time.perf_counter() - started

    heap = await idle_heap_per_actor(store, actors)
    return Figures(
        backend=backend,
        actors=actors,
        seed_seconds=seed_seconds,
        activation_seconds=activation_seconds,
        activation_p50=latencies[len(latencies) // 2],
        activation_p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        rss_per_actor=rss_per_actor,
        heap_per_actor=heap,
        messages=per_sender * SENDERS,
        message_seconds=message_seconds,
        active_at_once=active_at_once,
    )


@asynccontextmanager
async def open_benchmark_store(
    dsn: str | None,
) -> AsyncIterator[tuple[EventStore, str, list[str]]]:
    """A throwaway store (a fresh PostgreSQL schema, dropped after, or a temporary SQLite
    file), its name, and the arguments with which a child process opens the same store."""
    if dsn is None:
        from events.sqlite import open_sqlite_store

        with TemporaryDirectory() as directory:
            path = Path(directory) / "events.sqlite3"
            async with open_sqlite_store(path) as store:
                yield store, "SQLite", ["--memory-child", "--sqlite-path", str(path)]
        return
    from events.postgres import open_postgres_store
    from events.postgres_bridge import open_database

    schema = f"aftercall_bench_{uuid.uuid4().hex[:10]}"
    try:
        async with open_postgres_store(dsn, PostgresOptions(schema=schema)) as pg_store:
            yield pg_store, "PostgreSQL", ["--memory-child", "--dsn", dsn, "--schema", schema]
    finally:
        async with open_database(dsn, PostgresOptions(pool_size=1)) as database:
            await database.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def run(dsn: str | None, actors: int, messages: int) -> int:
    async with open_benchmark_store(dsn) as (store, backend, child):
        figures = await measure(store, backend, actors, messages, child)
    print(report(figures))
    failures = floors(figures)
    for failure in failures:
        print(f"BELOW THE FLOOR: {failure}")
    return 1 if failures else 0


async def run_memory_child(
    dsn: str | None, schema: str | None, sqlite_path: str | None, actors: int
) -> None:
    if sqlite_path is not None:
        from events.sqlite import open_sqlite_store

        async with open_sqlite_store(sqlite_path) as store:
            print(await resident_per_actor(store, actors))
        return
    from events.postgres import open_postgres_store

    assert dsn is not None
    async with open_postgres_store(dsn, PostgresOptions(schema=schema)) as pg_store:
        print(await resident_per_actor(pg_store, actors))


def report(f: Figures) -> str:
    kib = 1024
    rows = [
        ("store", f.backend),
        ("actors", f"{f.actors:,} (streams of {EVENTS_PER_STREAM} events, seeded in "
         f"{f.seed_seconds:.1f} s)"),
        ("activation rate, cold", f"{f.actors / f.activation_seconds:,.0f} actors/s "
         f"({f.activation_seconds:.2f} s for all)"),
        ("activation latency", f"p50 {f.activation_p50 * 1000:.0f} ms, "
         f"p99 {f.activation_p99 * 1000:.0f} ms (all told at once)"),
        ("active at once", f"{f.active_at_once:,}"),
        ("RSS per idle actor", f"{f.rss_per_actor / kib:.2f} KiB"),
        ("heap per idle actor", f"{f.heap_per_actor / kib:.2f} KiB (tracemalloc)"),
        ("message throughput", f"{f.messages / f.message_seconds:,.0f} messages/s "
         f"({f.messages:,} over {f.actors:,} actors, {SENDERS} senders)"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def floors(f: Figures) -> list[str]:
    failures = []
    if f.actors >= FLOOR_ACTORS and f.active_at_once < FLOOR_ACTORS:
        failures.append(f"only {f.active_at_once} actors were active at once")
    for name, value in (("RSS", f.rss_per_actor), ("heap", f.heap_per_actor)):
        if not value < FLOOR_BYTES_PER_ACTOR:
            failures.append(f"{name} per actor is {value / 1024:.2f} KiB, the floor is 10 KiB")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Actor runtime benchmark",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL URL (default: %(default)s)")
    parser.add_argument("--sqlite", action="store_true", help="use a temporary SQLite store")
    parser.add_argument("--actors", type=int, default=FLOOR_ACTORS, help="default %(default)s")
    parser.add_argument("--messages", type=int, default=200_000, help="default %(default)s")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--sqlite-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.actors < 1 or args.messages < SENDERS:
        parser.error(f"--actors must be >= 1 and --messages >= {SENDERS}")
    if args.memory_child:
        trio.run(run_memory_child, args.dsn, args.schema, args.sqlite_path, args.actors)
        return
    dsn = None if args.sqlite else args.dsn
    sys.exit(trio.run(run, dsn, args.actors, args.messages))


if __name__ == "__main__":
    main()
