"""The embedded event store: one SQLite file, same contract as PostgreSQL.

It is the default when ``DATABASE_URL`` is not set, so a newcomer runs aftercall with no
database server. It is for one process: SQLite has no notifications, so a reader in
another process (``aftercall events tail`` against the same file) learns of new events by
checking the file every ``poll_interval`` seconds; inside the process waiting readers are
woken at each commit.

SQLite is synchronous: every call runs in a worker thread. Writes go through one
connection and one thread (the group-commit writer); reads use a second connection, so
WAL lets them run while a batch commits. ``synchronous=FULL`` makes each commit durable
before the appending tasks are woken.

Order is safe by construction: SQLite has one writer at a time and a position is taken
inside the write transaction, so positions become visible in the order they were taken.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import attrs
import trio

from events._group_commit import (
    AppendRequest,
    ExistingEvent,
    GroupCommitter,
    answer_batch,
    plan_batch,
)
from events.migrations import SQLITE_MIGRATIONS, Migration
from events.store import (
    ANY_VERSION,
    AppendResult,
    NewEvent,
    RecordedEvent,
    StoreStatistics,
    StoreUnavailable,
    encode_payloads,
    validate_new_events,
    validate_stream_name,
)

T = TypeVar("T")

#: How long closing the store waits for queued appends to commit.
CLOSE_TIMEOUT = 10.0

_COLUMNS = "position, stream, version, type, data, metadata, event_id, recorded_at"


@attrs.define(eq=False)
class SQLiteEventStore:
    """Event store on a SQLite file (or ``:memory:`` is refused: use a temp file)."""

    path: Path
    poll_interval: float = 0.5
    _writer: sqlite3.Connection = attrs.field(init=False)
    _reader: sqlite3.Connection = attrs.field(init=False)
    _write_limiter: trio.CapacityLimiter = attrs.field(init=False)
    _read_limiter: trio.CapacityLimiter = attrs.field(init=False)
    _committer: GroupCommitter = attrs.field(init=False)
    _new_commit: trio.Event = attrs.field(factory=trio.Event)
    _duplicates: int = 0
    _conflicts: int = 0
    _head: int = 0

    def __attrs_post_init__(self) -> None:
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self._committer = GroupCommitter(self._write_batch)

    # -- lifecycle -----------------------------------------------------------------------
    async def _open(self) -> None:
        def connect() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            writer.execute("PRAGMA journal_mode=WAL")
            writer.execute("PRAGMA synchronous=FULL")
            _migrate(writer, SQLITE_MIGRATIONS)
            reader = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            return writer, reader

        try:
            self._writer, self._reader = await trio.to_thread.run_sync(connect)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the event store at {self.path}: {exc}") from exc
        self._head = await self._read(_head_query)

    async def _close(self) -> None:
        def close() -> None:
            self._writer.close()
            self._reader.close()

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(close)

    # -- thread hops ---------------------------------------------------------------------
    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(fn, self._reader, limiter=self._read_limiter)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(fn, self._writer, limiter=self._write_limiter)

    # -- the contract --------------------------------------------------------------------
    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: int | None = ANY_VERSION,
    ) -> AppendResult:
        validate_new_events(stream, events)
        payloads = encode_payloads(stream, events)
        request = AppendRequest(stream, list(events), expected_version, payloads)
        return await self._committer.submit(request)

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        validate_stream_name(stream)

        def query(conn: sqlite3.Connection) -> list[RecordedEvent]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND version >= ? "
                "ORDER BY version LIMIT ?",
                (stream, from_version, -1 if limit is None else limit),
            ).fetchall()
            return [_recorded(row) for row in rows]

        return await self._read(query)

    async def stream_version(self, stream: str) -> int:
        validate_stream_name(stream)

        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT max(version) FROM events WHERE stream = ?", (stream,)
            ).fetchone()
            return int(row[0] or 0)

        return await self._read(query)

    async def read_all(
        self, after: int = 0, limit: int = 1000, category: str | None = None
    ) -> list[RecordedEvent]:
        def query(conn: sqlite3.Connection) -> list[RecordedEvent]:
            if category is None:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                    (after, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE category = ? AND position > ? "
                    "ORDER BY position LIMIT ?",
                    (category, after, limit),
                ).fetchall()
            return [_recorded(row) for row in rows]

        return await self._read(query)

    async def head(self) -> int:
        self._head = max(self._head, await self._read(_head_query))
        return self._head

    async def wait_for_events(self, after: int) -> None:
        while True:
            woken = self._new_commit  # take it before looking, so no commit slips between
            if await self.head() > after:
                return
            with trio.move_on_after(self.poll_interval):
                await woken.wait()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            backend="sqlite",
            appends=self._committer.appends,
            batches=self._committer.batches,
            duplicates=self._duplicates,
            conflicts=self._conflicts,
            head=self._head,
        )

    # -- the writer ----------------------------------------------------------------------
    async def _write_batch(self, batch: list[AppendRequest]) -> None:
        def transaction(conn: sqlite3.Connection) -> tuple[Any, list[int]]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                streams = sorted({r.stream for r in batch})
                versions = _current_versions(conn, streams)
                ids = [str(e.event_id) for r in batch for e in r.events]
                existing = _existing(conn, ids)
                plan = plan_batch(batch, versions, existing)
                positions: list[int] = []
                now = datetime.now(UTC).isoformat()
                # A row's payload is its own request's: two requests in one batch may carry
                # the same event id (a webhook and a poller reporting one call), and the
                # row must hold the data of the request it was planned for.
                next_payload: dict[int, int] = {}
                for row in plan.rows:
                    index = next_payload.get(row.request_index, 0)
                    next_payload[row.request_index] = index + 1
                    data, metadata = batch[row.request_index].payloads[index]
                    cursor = conn.execute(
                        "INSERT INTO events (stream, category, version, type, data, metadata,"
                        " event_id, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            row.stream,
                            row.stream.split("-", 1)[0],
                            row.version,
                            row.event.type,
                            data,
                            metadata,
                            str(row.event.event_id),
                            now,
                        ),
                    )
                    assert cursor.lastrowid is not None
                    positions.append(cursor.lastrowid)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return plan, positions

        plan, positions = await self._write(transaction)
        answer_batch(batch, plan, positions)
        for outcome in plan.outcomes.values():
            if isinstance(outcome, AppendResult):
                self._duplicates += 1
            else:
                self._conflicts += 1
        if positions:
            self._head = max(self._head, positions[-1])
            self._new_commit.set()
            self._new_commit = trio.Event()


def _head_query(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(position) FROM events").fetchone()
    return int(row[0] or 0)


def _current_versions(conn: sqlite3.Connection, streams: list[str]) -> dict[str, int]:
    marks = ",".join("?" * len(streams))
    rows = conn.execute(
        f"SELECT stream, max(version) FROM events WHERE stream IN ({marks}) GROUP BY stream",
        streams,
    ).fetchall()
    return {stream: int(version) for stream, version in rows}


def _existing(conn: sqlite3.Connection, ids: list[str]) -> dict[UUID, ExistingEvent]:
    found: dict[UUID, ExistingEvent] = {}
    for start in range(0, len(ids), 500):  # stay under SQLite's host-parameter limit
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for event_id, stream, version, position in conn.execute(
            f"SELECT event_id, stream, version, position FROM events WHERE event_id IN ({marks})",
            chunk,
        ):
            found[UUID(event_id)] = ExistingEvent(stream, int(version), int(position))
    return found


def _recorded(row: tuple[Any, ...]) -> RecordedEvent:
    position, stream, version, type_, data, metadata, event_id, recorded_at = row
    return RecordedEvent(
        position=int(position),
        stream=stream,
        version=int(version),
        type=type_,
        data=json.loads(data),
        metadata=json.loads(metadata),
        event_id=UUID(event_id),
        recorded_at=datetime.fromisoformat(recorded_at),
    )


def _migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> None:
    """Apply what is missing, under SQLite's write lock (two processes starting: one waits)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in applied:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, datetime.now(UTC).isoformat()),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@asynccontextmanager
async def open_sqlite_store(
    path: Path | str, poll_interval: float = 0.5
) -> AsyncIterator[SQLiteEventStore]:
    """Open (creating and migrating) the store; its writer lives until the block ends."""
    store = SQLiteEventStore(Path(path), poll_interval=poll_interval)
    await store._open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store._committer.run)
            try:
                yield store
            finally:
                # Let queued appends commit (they were promised durability), within reason.
                store._committer.close()
                nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
    finally:
        await store._close()
