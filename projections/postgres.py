"""Read models in PostgreSQL, through the event store's `Database` (one crossing per page).

Each unit of work is an asyncio coroutine function run by ``Database.transaction``: the
bridge to asyncpg is crossed once per page, whatever the page holds. Rows go in with one
``INSERT ... SELECT * FROM unnest(<one array per column>) ON CONFLICT`` per table, which
runs at COPY-like speed, and are read and deleted by a join against an array of keys
(`load_sql`, `delete_sql`).

After a swap the tables have new oids: a connection that cached a statement against the
old ones fails that statement once (asyncpg's ``InvalidCachedStatementError``); the runner
treats that as a reason to try the page again, not as an error (`is_schema_change`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs

from events.store import EventStore
from projections.model import (
    Changes,
    ColumnType,
    LogEvent,
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
    POSTGRES_TYPES,
    REBUILD_SUFFIX,
    Checkpoint,
    CheckpointMoved,
    NoRebuild,
    Target,
    checkpoint_name,
    create_table_sql,
    index_name,
    index_sql,
    loadable_key,
    parked_event,
    parked_values,
    primary_key_name,
    records_for,
    upsert_sql,
)

if TYPE_CHECKING:
    from events.postgres_bridge import Connection, Database, Record

#: Advisory lock (two-int form, "aftp") taken while tables are created or swapped, so two
#: processes starting at once take turns instead of racing on the catalog.
PROJECTIONS_LOCK: Final = "SELECT pg_advisory_xact_lock(1634104432, 0)"

#: From this many rows a table's changes go in by COPY rather than one ``unnest`` insert.
COPY_FROM: Final = 200

#: The log in the store's safe order (``position > $1 ORDER BY position``, as
#: ``PostgresEventStore.read_all``), with only what folds read: no version, id or metadata.
#: The payload of an event of a type no rule folds stays on the server (NULL): its row
#: only says how far the page reaches.
#:
#: ``recorded_at`` comes as ISO 8601 text in UTC, whatever the session's TimeZone and
#: DateStyle, for ``datetime.fromisoformat``: asyncpg's timestamptz decoding (a timedelta
#: and a datetime addition in Python) cost more than the rest of the row together. That
#: saves ~1.2 us of client CPU per event for ~1 us of the server's, which a rebuild has
#: to spare: it is bound by this process's one thread.
READ_LOG: Final = (
    "SELECT position, stream, type, CASE WHEN type = ANY($3::text[]) THEN data END,"
    " to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
    " FROM events WHERE position > $1 ORDER BY position LIMIT $2"
)

_ARRAY_TYPES: Final[Mapping[ColumnType, str]] = {
    "text": "text[]",
    "int": "bigint[]",
    "float": "float8[]",
    "time": "timestamptz[]",
    "bool": "boolean[]",
}

_CHECKPOINTS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} ("
    " name text PRIMARY KEY, position bigint NOT NULL, version integer NOT NULL,"
    " updated_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
#: Made with the checkpoints (``prepare``, ``begin_rebuild``): a database whose read models
#: predate it gets it at the runner's next start.
_PARKED_DDL = (
    f"CREATE TABLE IF NOT EXISTS {PARKED} ("
    " projection text NOT NULL, position bigint NOT NULL, stream text NOT NULL,"
    " event_id text, event_type text NOT NULL, error_type text NOT NULL,"
    " error_message text NOT NULL, attempts integer NOT NULL, parked_at timestamptz NOT NULL,"
    f" CONSTRAINT {PARKED}_pkey PRIMARY KEY (projection, position))"
)
#: A parked event's row, written whole (parked again by a later try: its newest error).
_PARK = (
    f"INSERT INTO {PARKED} ({', '.join(PARKED_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7,"
    " $8, $9) ON CONFLICT (projection, position) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in PARKED_COLUMNS[2:])
)


def is_schema_change(exc: BaseException) -> bool:
    """A statement cached before a swap, run after it: harmless, try again."""
    return type(exc).__name__ == "InvalidCachedStatementError"


@attrs.define(eq=False)
class PostgresReadModels:
    database: Database
    backend: str = "postgres"

    async def prepare(self, projections: Sequence[Projection]) -> dict[str, Checkpoint]:
        return await self.database.transaction(_prepare, list(projections))

    async def checkpoints(self) -> dict[str, Checkpoint]:
        return await self.database.run(_checkpoints, retry=True)

    async def read_log(
        self, store: EventStore, after: int, limit: int, types: Collection[str]
    ) -> LogPage:
        rows = await self.database.run(_read_log, after, limit, list(types), retry=True)
        return log_page(rows)

    async def project(
        self, targets: Sequence[Target], records: Sequence[Recorded], last: int
    ) -> int:
        return await self.database.transaction(_project, list(targets), list(records), last)

    async def write(self, work: Sequence[tuple[Target, list[Changes]]], last: int) -> int:
        return await self.database.transaction(_write, list(work), last)

    async def park(self, target: Target, event: ParkedEvent) -> None:
        await self.database.transaction(_park, target, event)

    async def parked(self, names: Collection[str]) -> list[ParkedEvent]:
        return await self.database.run(_parked, list(names), retry=True)

    async def note_parked(self, event: ParkedEvent) -> None:
        await self.database.transaction(_note_parked, event)

    async def apply_parked(self, projection: Projection, record: Recorded) -> bool:
        return await self.database.transaction(_apply_parked, projection, record)

    async def begin_rebuild(self, projection: Projection) -> None:
        await self.database.transaction(_begin_rebuild, projection)

    async def swap(self, projection: Projection) -> Checkpoint:
        # Secondary indexes of the rebuilt tables first, outside the swap: readers of the
        # live tables wait only for the renames.
        await self.database.transaction(_finish_rebuild, projection)
        return await self.database.transaction(_swap, projection)

    async def query(
        self, sql: str, *params: Any, types: Mapping[str, ColumnType] | None = None
    ) -> list[Row]:
        rows = await self.database.fetch(numbered(sql), *params, retry=True)
        return [dict(row.items()) for row in rows]


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    pieces = sql.split("?")
    out = [pieces[0]]
    for index, piece in enumerate(pieces[1:], start=1):
        out.append(f"${index}{piece}")
    return "".join(out)


def log_page(rows: Sequence[Record]) -> LogPage:
    """The page `READ_LOG` returned; its `LogEvent`s are made when first asked for."""
    if not rows:
        return LogPage([], None)
    return LogPage(partial(_log_events, rows), rows[-1][0], len(rows))


def _log_events(rows: Sequence[Record]) -> list[Recorded]:
    """The page's payloads are parsed by one ``json.loads`` of them joined into one array:
    per call, ``json.loads`` spends as long getting ready as parsing a small object."""
    kept = [row for row in rows if row[3] is not None]
    data = json.loads("[" + ",".join([row[3] for row in kept]) + "]")
    return list(
        map(
            _log_event,
            zip(
                [row[0] for row in kept],
                [row[1] for row in kept],
                [row[2] for row in kept],
                data,
                [_from_iso(row[4]) for row in kept],  # always "+00:00": timezone.utc
                strict=True,
            ),
        )
    )


#: `LogEvent` from a tuple of its fields, without the Python-level ``__new__`` a named
#: tuple's constructor runs.
_log_event: Callable[[tuple[Any, ...]], LogEvent] = partial(tuple.__new__, LogEvent)
_from_iso: Final = datetime.fromisoformat


# -- the asyncio side (each function runs in one bridge crossing) ---------------------------
async def _read_log(conn: Connection, after: int, limit: int, types: list[str]) -> list[Record]:
    return await conn.fetch(READ_LOG, after, limit, types)


async def _checkpoints(conn: Connection) -> dict[str, Checkpoint]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", CHECKPOINTS)
    if not exists:
        return {}
    rows = await conn.fetch(f"SELECT name, position, version, updated_at FROM {CHECKPOINTS}")
    return {row["name"]: Checkpoint(**dict(row.items())) for row in rows}


async def _prepare(conn: Connection, projections: list[Projection]) -> dict[str, Checkpoint]:
    await conn.execute(PROJECTIONS_LOCK)
    await conn.execute(_CHECKPOINTS_DDL)
    await conn.execute(_PARKED_DDL)
    known = await _checkpoints(conn)
    for projection in projections:
        if projection.name in known:
            continue
        # No checkpoint: whatever tables are there were never committed with one.
        for table in projection.tables:
            await conn.execute(f"DROP TABLE IF EXISTS {table.name}")
            for statement in create_table_sql(table, POSTGRES_TYPES):
                await conn.execute(statement)
        await conn.execute(
            f"INSERT INTO {CHECKPOINTS} (name, position, version) VALUES ($1, 0, $2)",
            projection.name,
            projection.version,
        )
    return await _checkpoints(conn)


async def _project(
    conn: Connection, targets: list[Target], records: list[Recorded], last: int
) -> int:
    for target in targets:
        await _check_checkpoint(conn, target)
        await _fold_into(conn, target, records_for(target, records))
        await _save_checkpoint(conn, target.checkpoint, last)
    return last


async def _fold_into(conn: Connection, target: Target, records: list[Recorded]) -> None:
    """Load the rows ``records`` touch, fold them, write what changed (no checkpoint)."""
    projection = target.projection
    plan = projection.plan(records)
    loaded: dict[str, list[Row]] = {}
    for table_name, keys in wanted_keys(plan).items():
        table = projection.table(table_name)
        found = await conn.fetch(load_sql(table, target.suffix), [k[0] for k in keys])
        loaded[table_name] = [dict(row.items()) for row in found]
    rows = fold_page(projection, loaded, plan)
    await _write_changes(conn, target, rows.changes())


async def _write_changes(conn: Connection, target: Target, changes: Iterable[Changes]) -> None:
    for change in changes:
        table = change.table
        if change.deletes:
            await conn.execute(delete_sql(table, target.suffix), [k[0] for k in change.deletes])
        if change.inserts:
            await conn.copy_records_to_table(
                table.name + target.suffix, records=change.inserts, columns=table.column_names
            )
        for batch in (change.upserts, change.increments):
            if batch:
                await _upsert(conn, table, target.suffix, batch)


def load_sql(table: Table, suffix: str) -> str:
    """The rows of ``table`` whose key is in the array ``$1``: a join against the array.

    Not ``WHERE key = ANY($1)``: with a page's few hundred keys the planner chose a
    sequential scan for it whenever the table's statistics were small or stale (a new
    deployment, a table growing between analyses), and each row was then compared with
    every key in turn. Measured in the conversation benchmark: 136 ms of PostgreSQL's CPU
    per page on a 7,000-row table, most of its CPU per message. The join is an index
    probe per key (or one hash of the keys), whatever the statistics say.
    """
    columns = ", ".join(f"t.{name}" for name in table.column_names)
    return (
        f"SELECT {columns} FROM unnest($1::text[]) AS k(key) "
        f"JOIN {table.name}{suffix} AS t ON t.{loadable_key(table)} = k.key"
    )


def delete_sql(table: Table, suffix: str) -> str:
    """Delete the rows whose key is in the array ``$1`` (a join, as `load_sql` says why)."""
    return (
        f"DELETE FROM {table.name}{suffix} AS t USING unnest($1::text[]) AS k(key) "
        f"WHERE t.{loadable_key(table)} = k.key"
    )


async def _write(conn: Connection, work: list[tuple[Target, list[Changes]]], last: int) -> int:
    for target, changes in work:
        await _check_checkpoint(conn, target)
        await _write_changes(conn, target, changes)
        await _save_checkpoint(conn, target.checkpoint, last)
    return last


async def _park(conn: Connection, target: Target, event: ParkedEvent) -> None:
    await _check_checkpoint(conn, target)
    await conn.execute(_PARK, *parked_values(event))
    await _save_checkpoint(conn, target.checkpoint, event.position)


async def _note_parked(conn: Connection, event: ParkedEvent) -> None:
    await conn.execute(_PARK, *parked_values(event))


async def _parked(conn: Connection, names: list[str]) -> list[ParkedEvent]:
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", PARKED):
        return []  # nothing was ever prepared here, so nothing parked
    rows = await conn.fetch(
        f"SELECT {', '.join(PARKED_COLUMNS)} FROM {PARKED} WHERE projection = ANY($1::text[])"
        " ORDER BY position, projection",
        names,
    )
    return [parked_event(tuple(row.values())) for row in rows]


async def _apply_parked(conn: Connection, projection: Projection, record: Recorded) -> bool:
    # The checkpoint's lock first, as every page takes it: a live page folding the same
    # rows waits for this transaction (and then reads what it wrote), or this one for it.
    await conn.fetchval(
        f"SELECT position FROM {CHECKPOINTS} WHERE name = $1 FOR UPDATE", projection.name
    )
    unparked = await conn.fetchval(
        f"DELETE FROM {PARKED} WHERE projection = $1 AND position = $2 RETURNING position",
        projection.name,
        record.position,
    )
    if unparked is None:
        return False
    await _fold_into(conn, Target(projection, record.position), [record])
    return True


async def _check_checkpoint(conn: Connection, target: Target) -> None:
    actual = await conn.fetchval(
        f"SELECT position FROM {CHECKPOINTS} WHERE name = $1 FOR UPDATE", target.checkpoint
    )
    if actual != target.expected:
        raise CheckpointMoved(target.checkpoint, target.expected, actual)


async def _save_checkpoint(conn: Connection, name: str, position: int) -> None:
    """The last statement of a page: before it, a crash leaves no trace of the page."""
    await conn.execute(
        f"UPDATE {CHECKPOINTS} SET position = $2, updated_at = clock_timestamp() WHERE name = $1",
        name,
        position,
    )


async def _upsert(conn: Connection, table: Table, suffix: str, rows: list[tuple[Any, ...]]) -> None:
    """Write rows: one ``unnest`` statement, or for many rows COPY into a staging table
    and one ``INSERT ... SELECT`` (COPY's binary encoding costs half the client CPU)."""
    names = table.column_names
    if len(rows) < COPY_FROM:
        arrays = ", ".join(f"${i}::{_ARRAY_TYPES[c.type]}" for i, c in enumerate(table.columns, 1))
        await conn.execute(
            upsert_sql(table, suffix, f"SELECT * FROM unnest({arrays})"),
            *([row[i] for row in rows] for i in range(len(names))),
        )
        return
    stage = staging_name(table)
    # A temporary table lives as long as the pooled connection: made once, emptied after
    # each use. Its name carries the columns, so a new version never meets an old one.
    await conn.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {table.name}{suffix})")
    await conn.copy_records_to_table(stage, records=rows, columns=names)
    await conn.execute(upsert_sql(table, suffix, f"SELECT * FROM {stage}"))
    await conn.execute(f"TRUNCATE {stage}")


def staging_name(table: Table) -> str:
    shape = ",".join(f"{c.name}:{c.type}" for c in table.columns)
    return f"stage_{table.name}_{zlib.crc32(shape.encode()):08x}"


async def _begin_rebuild(conn: Connection, projection: Projection) -> None:
    await conn.execute(PROJECTIONS_LOCK)
    await conn.execute(_CHECKPOINTS_DDL)
    await conn.execute(_PARKED_DDL)
    # What an earlier attempt parked goes with its tables: this one tries every event again.
    await conn.execute(
        f"DELETE FROM {PARKED} WHERE projection = $1", checkpoint_name(projection, aside=True)
    )
    for table in projection.tables:
        await conn.execute(f"DROP TABLE IF EXISTS {table.name}{REBUILD_SUFFIX}")
        # Logged from the start: an unlogged table made logged before the swap is
        # written twice (rows, then a rewrite with its WAL and key index at the end, when
        # nothing else overlaps it); measured on a million events, that cost more in all
        # and ~3 s more of the rebuild's time than WAL for each page as it commits.
        for statement in create_table_sql(table, POSTGRES_TYPES, REBUILD_SUFFIX, indexes=False):
            await conn.execute(statement)
    await conn.execute(
        f"INSERT INTO {CHECKPOINTS} (name, position, version) VALUES ($1, 0, $2) "
        "ON CONFLICT (name) DO UPDATE SET position = 0, version = excluded.version,"
        " updated_at = clock_timestamp()",
        checkpoint_name(projection, aside=True),
        projection.version,
    )


async def _finish_rebuild(conn: Connection, projection: Projection) -> None:
    for table in projection.tables:
        rebuilt = table.name + REBUILD_SUFFIX
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", rebuilt):
            raise NoRebuild(f"projection {projection.name} has no rebuild in progress")
        for statement in index_sql(table, REBUILD_SUFFIX):
            await conn.execute(statement.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))


async def _swap(conn: Connection, projection: Projection) -> Checkpoint:
    await conn.execute(PROJECTIONS_LOCK)
    live, aside = projection.name, checkpoint_name(projection, aside=True)
    # Lock both rows first (in name order): the live writer waits here, then finds its
    # checkpoint moved and re-reads it.
    rows = await conn.fetch(
        f"SELECT name, position FROM {CHECKPOINTS} WHERE name = ANY($1::text[])"
        " ORDER BY name FOR UPDATE",
        [live, aside],
    )
    positions = {row["name"]: row["position"] for row in rows}
    if aside not in positions:
        raise NoRebuild(f"projection {projection.name} has no rebuild in progress")
    for table in projection.tables:
        rebuilt = table.name + REBUILD_SUFFIX
        await conn.execute(f"DROP TABLE IF EXISTS {table.name}")
        await conn.execute(f"ALTER TABLE {rebuilt} RENAME TO {table.name}")
        await conn.execute(
            f"ALTER INDEX {primary_key_name(table, REBUILD_SUFFIX)} "
            f"RENAME TO {primary_key_name(table)}"
        )
        for columns in table.indexes:
            await conn.execute(
                f"ALTER INDEX {index_name(table, columns, REBUILD_SUFFIX)} "
                f"RENAME TO {index_name(table, columns)}"
            )
    row = await conn.fetchrow(
        f"INSERT INTO {CHECKPOINTS} (name, position, version) VALUES ($1, $2, $3) "
        "ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
        " version = excluded.version, updated_at = clock_timestamp() "
        "RETURNING name, position, version, updated_at",
        live,
        positions[aside],
        projection.version,
    )
    await conn.execute(f"DELETE FROM {CHECKPOINTS} WHERE name = $1", aside)
    # The events the rebuild parked replace the live ones, as its tables do.
    await conn.execute(_PARKED_DDL)
    await conn.execute(f"DELETE FROM {PARKED} WHERE projection = $1", live)
    await conn.execute(f"UPDATE {PARKED} SET projection = $1 WHERE projection = $2", live, aside)
    assert row is not None
    return Checkpoint(**dict(row.items()))
