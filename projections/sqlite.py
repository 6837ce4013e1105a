"""Read models in the SQLite file of the embedded event store.

A connection of its own to the same file, used from one worker thread at a time (a
``CapacityLimiter(1)``, as ``events.sqlite`` does), and a second one for queries so a long
rebuild page never makes a reader wait. A page is one ``BEGIN IMMEDIATE`` transaction:
SQLite's write lock serialises it with the event store's own commits and with a rebuild
run from another process.

``synchronous=NORMAL`` is enough here, unlike the log: in WAL mode a power cut can lose the
last commits but never tear one, and a lost projection commit takes its checkpoint with it,
so the page is simply projected again.

Times are stored as ISO 8601 text in UTC with microseconds (so they sort as times), bools
as 0/1; rows are turned back into Python values when read.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from events.store import EventStore, StoreUnavailable
from projections.model import (
    Changes,
    ColumnType,
    LogPage,
    Projection,
    Recorded,
    Row,
    Table,
    fold_page,
    wanted_keys,
)
from projections.parking import ParkedEvent
from projections.readmodels import (
    CHECKPOINTS,
    PARKED,
    PARKED_COLUMNS,
    REBUILD_SUFFIX,
    SQLITE_TYPES,
    Checkpoint,
    CheckpointMoved,
    NoRebuild,
    Target,
    checkpoint_name,
    create_table_sql,
    index_name,
    loadable_key,
    parked_event,
    parked_values,
    records_for,
    upsert_sql,
)
from projections.rules import time_of

T = TypeVar("T")

_CHECKPOINTS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} ("
    " name TEXT PRIMARY KEY, position INTEGER NOT NULL, version INTEGER NOT NULL,"
    " updated_at TEXT NOT NULL)"
)
#: Made with the checkpoints (``prepare``, ``begin_rebuild``): a file whose read models
#: predate it gets it at the runner's next start.
_PARKED_DDL = (
    f"CREATE TABLE IF NOT EXISTS {PARKED} ("
    " projection TEXT NOT NULL, position INTEGER NOT NULL, stream TEXT NOT NULL,"
    " event_id TEXT, event_type TEXT NOT NULL, error_type TEXT NOT NULL,"
    " error_message TEXT NOT NULL, attempts INTEGER NOT NULL, parked_at TEXT NOT NULL,"
    " PRIMARY KEY (projection, position))"
)
#: A parked event's row, written whole (parked again by a later try: its newest error).
_PARK = (
    f"INSERT INTO {PARKED} ({', '.join(PARKED_COLUMNS)}) VALUES ({', '.join('?' * 9)})"
    " ON CONFLICT (projection, position) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in PARKED_COLUMNS[2:])
)


@attrs.define(eq=False)
class SQLiteReadModels:
    path: Path
    backend: str = "sqlite"
    _writer: sqlite3.Connection = attrs.field(init=False)
    _reader: sqlite3.Connection = attrs.field(init=False)
    _write_limiter: trio.CapacityLimiter = attrs.field(init=False)
    _read_limiter: trio.CapacityLimiter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(fn, self._writer, limiter=self._write_limiter)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(fn, self._reader, limiter=self._read_limiter)

    async def prepare(self, projections: Sequence[Projection]) -> dict[str, Checkpoint]:
        return await self._write(lambda conn: _in_transaction(conn, _prepare, list(projections)))

    async def checkpoints(self) -> dict[str, Checkpoint]:
        return await self._read(_checkpoints)

    async def read_log(
        self, store: EventStore, after: int, limit: int, types: Collection[str]
    ) -> LogPage:
        # The store's own read: the embedded log is small, and its times are the store's
        # to parse.
        records = await store.read_all(after=after, limit=limit)
        if not records:
            return LogPage([], None)
        kept: list[Recorded] = [record for record in records if record.type in types]
        return LogPage(kept, records[-1].position, len(records))

    async def project(
        self, targets: Sequence[Target], records: Sequence[Recorded], last: int
    ) -> int:
        return await self._write(
            lambda conn: _in_transaction(conn, _project, list(targets), list(records), last)
        )

    async def write(self, work: Sequence[tuple[Target, list[Changes]]], last: int) -> int:
        return await self._write(lambda conn: _in_transaction(conn, _write, list(work), last))

    async def park(self, target: Target, event: ParkedEvent) -> None:
        await self._write(lambda conn: _in_transaction(conn, _park, target, event))

    async def parked(self, names: Collection[str]) -> list[ParkedEvent]:
        wanted = list(names)
        return await self._read(lambda conn: _parked(conn, wanted))

    async def note_parked(self, event: ParkedEvent) -> None:
        await self._write(lambda conn: _in_transaction(conn, _note_parked, event))

    async def apply_parked(self, projection: Projection, record: Recorded) -> bool:
        return await self._write(
            lambda conn: _in_transaction(conn, _apply_parked, projection, record)
        )

    async def begin_rebuild(self, projection: Projection) -> None:
        await self._write(lambda conn: _in_transaction(conn, _begin_rebuild, projection))

    async def swap(self, projection: Projection) -> Checkpoint:
        return await self._write(lambda conn: _in_transaction(conn, _swap, projection))

    async def query(
        self, sql: str, *params: Any, types: Mapping[str, ColumnType] | None = None
    ) -> list[Row]:
        def run(conn: sqlite3.Connection) -> list[Row]:
            cursor = conn.execute(sql, [_to_sqlite(p) for p in params])
            names = [d[0] for d in cursor.description]
            return [_from_sqlite(dict(zip(names, row, strict=True)), types) for row in cursor]

        return await self._read(run)


@asynccontextmanager
async def open_sqlite_read_models(path: Path | str) -> AsyncIterator[SQLiteReadModels]:
    models = SQLiteReadModels(Path(path))

    def connect() -> tuple[sqlite3.Connection, sqlite3.Connection]:
        connections = []
        for _ in range(2):
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            connections.append(conn)
        return connections[0], connections[1]

    try:
        models._writer, models._reader = await trio.to_thread.run_sync(connect)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open the read models in {path}: {exc}") from exc
    try:
        yield models
    finally:

        def close() -> None:
            models._writer.close()
            models._reader.close()

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(close)


# -- the worker thread's side ---------------------------------------------------------------
def _in_transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _to_sqlite(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, bool):
        return int(value)
    return value


def _from_sqlite(row: Row, types: Mapping[str, ColumnType] | None) -> Row:
    for name, type_ in (types or {}).items():
        value = row.get(name)
        if value is None:
            continue
        if type_ == "time":
            row[name] = time_of(value)
        elif type_ == "bool":
            row[name] = bool(value)
    return row


def _types(table: Table) -> dict[str, ColumnType]:
    return {c.name: c.type for c in table.columns if c.type in ("time", "bool")}


def _checkpoints(conn: sqlite3.Connection) -> dict[str, Checkpoint]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (CHECKPOINTS,)
    ).fetchone()
    if exists is None:
        return {}
    rows = conn.execute(f"SELECT name, position, version, updated_at FROM {CHECKPOINTS}")
    return {
        name: Checkpoint(name, int(position), int(version), time_of(updated_at))
        for name, position, version, updated_at in rows
    }


def _create(conn: sqlite3.Connection, table: Table, suffix: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {table.name}{suffix}")
    # A rebuild gets its secondary indexes at the swap, once its rows are in.
    for statement in create_table_sql(table, SQLITE_TYPES, suffix, indexes=not suffix):
        conn.execute(statement)


def _prepare(conn: sqlite3.Connection, projections: list[Projection]) -> dict[str, Checkpoint]:
    conn.execute(_CHECKPOINTS_DDL)
    conn.execute(_PARKED_DDL)
    known = _checkpoints(conn)
    for projection in projections:
        if projection.name in known:
            continue
        for table in projection.tables:
            _create(conn, table, "")
        conn.execute(
            f"INSERT INTO {CHECKPOINTS} (name, position, version, updated_at) VALUES (?, 0, ?, ?)",
            (projection.name, projection.version, _now()),
        )
    return _checkpoints(conn)


def _project(
    conn: sqlite3.Connection, targets: list[Target], records: list[Recorded], last: int
) -> int:
    for target in targets:
        _check_checkpoint(conn, target)
        _fold_into(conn, target, records_for(target, records))
        _save_checkpoint(conn, target.checkpoint, last)
    return last


def _fold_into(conn: sqlite3.Connection, target: Target, records: list[Recorded]) -> None:
    """Load the rows ``records`` touch, fold them, write what changed (no checkpoint)."""
    projection = target.projection
    plan = projection.plan(records)
    loaded: dict[str, list[Row]] = {}
    for table_name, keys in wanted_keys(plan).items():
        table = projection.table(table_name)
        cursor = conn.execute(
            f"SELECT {', '.join(table.column_names)} FROM {table.name}{target.suffix} "
            f"WHERE {loadable_key(table)} IN (SELECT value FROM json_each(?))",
            (json.dumps([k[0] for k in keys]),),
        )
        types = _types(table)
        loaded[table_name] = [
            _from_sqlite(dict(zip(table.column_names, row, strict=True)), types) for row in cursor
        ]
    rows = fold_page(projection, loaded, plan)
    _write_changes(conn, target, rows.changes())


def _write_changes(conn: sqlite3.Connection, target: Target, changes: Iterable[Changes]) -> None:
    for change in changes:
        table = change.table
        if change.deletes:
            conn.execute(
                f"DELETE FROM {table.name}{target.suffix} WHERE {loadable_key(table)} "
                "IN (SELECT value FROM json_each(?))",
                (json.dumps([k[0] for k in change.deletes]),),
            )
        marks = ", ".join("?" * len(table.columns))
        if change.inserts:
            conn.executemany(
                f"INSERT INTO {table.name}{target.suffix} VALUES ({marks})",
                [[_to_sqlite(v) for v in row] for row in change.inserts],
            )
        statement = upsert_sql(table, target.suffix, f"VALUES ({marks})")
        for batch in (change.upserts, change.increments):
            if batch:
                conn.executemany(statement, [[_to_sqlite(v) for v in row] for row in batch])


def _write(conn: sqlite3.Connection, work: list[tuple[Target, list[Changes]]], last: int) -> int:
    for target, changes in work:
        _check_checkpoint(conn, target)
        _write_changes(conn, target, changes)
        _save_checkpoint(conn, target.checkpoint, last)
    return last


def _park(conn: sqlite3.Connection, target: Target, event: ParkedEvent) -> None:
    _check_checkpoint(conn, target)
    _note_parked(conn, event)
    _save_checkpoint(conn, target.checkpoint, event.position)


def _note_parked(conn: sqlite3.Connection, event: ParkedEvent) -> None:
    conn.execute(_PARK, [_to_sqlite(value) for value in parked_values(event)])


def _parked(conn: sqlite3.Connection, names: list[str]) -> list[ParkedEvent]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (PARKED,)
    ).fetchone()
    if exists is None:
        return []  # nothing was ever prepared here, so nothing parked
    rows = conn.execute(
        f"SELECT {', '.join(PARKED_COLUMNS)} FROM {PARKED}"
        " WHERE projection IN (SELECT value FROM json_each(?)) ORDER BY position, projection",
        (json.dumps(names),),
    )
    return [parked_event((*row[:-1], time_of(row[-1]))) for row in rows]


def _apply_parked(conn: sqlite3.Connection, projection: Projection, record: Recorded) -> bool:
    # BEGIN IMMEDIATE took the write lock: no live page runs beside this one.
    unparked = conn.execute(
        f"DELETE FROM {PARKED} WHERE projection = ? AND position = ?",
        (projection.name, record.position),
    ).rowcount
    if not unparked:
        return False
    _fold_into(conn, Target(projection, record.position), [record])
    return True


def _check_checkpoint(conn: sqlite3.Connection, target: Target) -> None:
    found = conn.execute(
        f"SELECT position FROM {CHECKPOINTS} WHERE name = ?", (target.checkpoint,)
    ).fetchone()
    actual = None if found is None else int(found[0])
    if actual != target.expected:
        raise CheckpointMoved(target.checkpoint, target.expected, actual)


def _save_checkpoint(conn: sqlite3.Connection, name: str, position: int) -> None:
    """The last statement of a page: before it, a crash leaves no trace of the page."""
    conn.execute(
        f"UPDATE {CHECKPOINTS} SET position = ?, updated_at = ? WHERE name = ?",
        (position, _now(), name),
    )


def _begin_rebuild(conn: sqlite3.Connection, projection: Projection) -> None:
    conn.execute(_CHECKPOINTS_DDL)
    conn.execute(_PARKED_DDL)
    # What an earlier attempt parked goes with its tables: this one tries every event again.
    conn.execute(
        f"DELETE FROM {PARKED} WHERE projection = ?", (checkpoint_name(projection, aside=True),)
    )
    for table in projection.tables:
        _create(conn, table, REBUILD_SUFFIX)
    conn.execute(
        f"INSERT INTO {CHECKPOINTS} (name, position, version, updated_at) VALUES (?, 0, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = 0, version = excluded.version,"
        " updated_at = excluded.updated_at",
        (checkpoint_name(projection, aside=True), projection.version, _now()),
    )


def _swap(conn: sqlite3.Connection, projection: Projection) -> Checkpoint:
    aside = checkpoint_name(projection, aside=True)
    found = conn.execute(f"SELECT position FROM {CHECKPOINTS} WHERE name = ?", (aside,)).fetchone()
    if found is None:
        raise NoRebuild(f"projection {projection.name} has no rebuild in progress")
    position = int(found[0])
    for table in projection.tables:
        conn.execute(f"DROP TABLE IF EXISTS {table.name}")
        conn.execute(f"ALTER TABLE {table.name}{REBUILD_SUFFIX} RENAME TO {table.name}")
        # SQLite cannot rename an index: make the live names again on the renamed table.
        for columns in table.indexes:
            conn.execute(f"DROP INDEX IF EXISTS {index_name(table, columns, REBUILD_SUFFIX)}")
            conn.execute(
                f"CREATE INDEX {index_name(table, columns)} ON {table.name} ({', '.join(columns)})"
            )
    updated = _now()
    conn.execute(
        f"INSERT INTO {CHECKPOINTS} (name, position, version, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
        " version = excluded.version, updated_at = excluded.updated_at",
        (projection.name, position, projection.version, updated),
    )
    conn.execute(f"DELETE FROM {CHECKPOINTS} WHERE name = ?", (aside,))
    # The events the rebuild parked replace the live ones, as its tables do.
    conn.execute(_PARKED_DDL)
    conn.execute(f"DELETE FROM {PARKED} WHERE projection = ?", (projection.name,))
    conn.execute(
        f"UPDATE {PARKED} SET projection = ? WHERE projection = ?", (projection.name, aside)
    )
    return Checkpoint(projection.name, position, projection.version, time_of(updated))
