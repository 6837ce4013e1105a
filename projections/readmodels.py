"""Where read models live, whatever the database: the contract and the SQL both share.

A `ReadModels` keeps every projection's tables and its checkpoint in the database of the
event log (PostgreSQL, or the SQLite file), so that one transaction writes a page's rows and
moves the checkpoint: exactly once, even across crashes.

Every page's transaction first locks the projection's checkpoint row and checks it is
where the writer believes it is. If not (another process projected the same page, a
rebuild was swapped in, a COMMIT whose answer was lost did commit), it raises
`CheckpointMoved` and writes nothing; the writer re-reads the checkpoint and goes on from
there. That check, not any in-memory state, is what makes a page count once.

Rebuilds build aside: the same tables with a ``_rebuild`` suffix and a checkpoint row of
their own, filled from position 0 while the live tables keep serving and following. When
the rebuild has caught up, one transaction puts the rebuilt tables in place of the live
ones and gives the live checkpoint the rebuild's position; readers see either the old
tables or the new, never a half-built one.

Events a projection could not apply are parked in ``projection_parked_events`` (see
``projections.parking``): one row per projection and position, written in the transaction
that moves that projection's checkpoint past the event, so a parked event is never both
applied and parked, nor lost between the two. A rebuild parks under its own checkpoint's
name, and the swap puts its parked rows in place of the live ones with its tables.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import attrs

from events.store import EventStore, EventStoreError
from projections.model import Changes, ColumnType, LogPage, Projection, Recorded, Row, Table
from projections.parking import ParkedEvent

CHECKPOINTS: Final = "projection_checkpoints"
PARKED: Final = "projection_parked_events"
#: The parked table's columns, in the order its rows are written and read.
PARKED_COLUMNS: Final = (
    "projection",
    "position",
    "stream",
    "event_id",
    "event_type",
    "error_type",
    "error_message",
    "attempts",
    "parked_at",
)
REBUILD_SUFFIX: Final = "_rebuild"


class CheckpointMoved(EventStoreError):
    """The checkpoint is not where the writer thought: nothing was written; re-read it."""

    def __init__(self, name: str, expected: int, actual: int | None) -> None:
        where = "gone" if actual is None else f"at {actual}"
        super().__init__(f"checkpoint {name} is {where}, expected {expected}")
        self.name = name
        self.expected = expected
        self.actual = actual


class NoRebuild(EventStoreError):
    """A swap was asked for a projection that has no rebuild in progress."""


@attrs.frozen
class Checkpoint:
    name: str
    position: int
    version: int
    updated_at: datetime | None


@attrs.frozen
class Target:
    """One projection's share of a page: its live tables, or the ones being rebuilt."""

    projection: Projection
    expected: int
    aside: bool = False

    @property
    def checkpoint(self) -> str:
        return checkpoint_name(self.projection, aside=self.aside)

    @property
    def suffix(self) -> str:
        return REBUILD_SUFFIX if self.aside else ""


def checkpoint_name(projection: Projection, *, aside: bool = False) -> str:
    return projection.name + (REBUILD_SUFFIX if aside else "")


class ReadModels(Protocol):
    """The read-model tables of one database. All methods are Trio-async."""

    backend: str

    async def prepare(self, projections: Sequence[Projection]) -> dict[str, Checkpoint]:
        """Create what is missing (tables, checkpoint rows at 0); return every checkpoint."""
        ...

    async def checkpoints(self) -> dict[str, Checkpoint]: ...

    async def read_log(
        self, store: EventStore, after: int, limit: int, types: Collection[str]
    ) -> LogPage:
        """Up to ``limit`` events past ``after`` in the store's safe order, keeping only
        those of ``types`` (what the projections fold); `LogPage.last` says how far it read.

        SQLite reads through ``store``; PostgreSQL reads the log in its own database, only
        the columns folds use, and never sends the payload of an event no rule folds.
        """
        ...

    async def project(
        self, targets: Sequence[Target], records: Sequence[Recorded], last: int
    ) -> int:
        """Fold ``records`` into each target and move its checkpoint to ``last`` (the end
        of the page read, which may hold events the targets do not fold), in one
        transaction.

        A target gets only the records past its ``expected`` position. Returns ``last``.
        Raises `CheckpointMoved` (nothing written) when a checkpoint is not at
        ``expected``.
        """
        ...

    async def write(self, work: Sequence[tuple[Target, list[Changes]]], last: int) -> int:
        """Write changes already folded (``RowSet.take_changes``) and move each target's
        checkpoint to ``last``, in one transaction (`CheckpointMoved` as for `project`)."""
        ...

    async def park(self, target: Target, event: ParkedEvent) -> None:
        """Set ``event`` aside and move the target's checkpoint to its position, in one
        transaction (`CheckpointMoved` as for `project`). The event must be the only one
        of the log between ``target.expected`` and that position."""
        ...

    async def parked(self, names: Collection[str]) -> list[ParkedEvent]:
        """The events parked under these checkpoint names, in the order of the log (none
        when nothing was ever parked, even before `prepare` made the table)."""
        ...

    async def note_parked(self, event: ParkedEvent) -> None:
        """Write a parked event's row again (its latest error and tries), nothing else."""
        ...

    async def apply_parked(self, projection: Projection, record: Recorded) -> bool:
        """Fold a parked event into the live tables and unpark it, in one transaction
        (serialised with the live pages by the checkpoint's lock). False, and nothing
        written, when it is no longer parked (another process got there first)."""
        ...

    async def begin_rebuild(self, projection: Projection) -> None:
        """Empty aside tables and an aside checkpoint at 0 (dropping an earlier attempt)."""
        ...

    async def swap(self, projection: Projection) -> Checkpoint:
        """Put the rebuilt tables in place of the live ones, in one transaction."""
        ...

    async def query(
        self, sql: str, *params: Any, types: Mapping[str, ColumnType] | None = None
    ) -> list[Row]:
        """Rows of a read-only query written with ``?`` placeholders.

        ``types`` names columns to return as Python values (times as aware datetimes,
        bools as bools) whatever the backend stores them as.
        """
        ...


# -- DDL both backends generate ------------------------------------------------------------
POSTGRES_TYPES: Final[Mapping[ColumnType, str]] = {
    "text": "text",
    "int": "bigint",
    "float": "double precision",
    "time": "timestamptz",
    "bool": "boolean",
}
SQLITE_TYPES: Final[Mapping[ColumnType, str]] = {
    "text": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "time": "TEXT",  # ISO 8601 in UTC with microseconds: sorts as time does
    "bool": "INTEGER",
}


def primary_key_name(table: Table, suffix: str = "") -> str:
    return f"{table.name}{suffix}_pkey"


def index_name(table: Table, columns: Sequence[str], suffix: str = "") -> str:
    return f"{table.name}{suffix}_{'_'.join(columns)}_idx"


def create_table_sql(
    table: Table,
    types: Mapping[ColumnType, str],
    suffix: str = "",
    *,
    indexes: bool = True,
) -> list[str]:
    name = table.name + suffix
    body = ", ".join(f"{c.name} {types[c.type]}" for c in table.columns)
    key = ", ".join(table.key)
    statements = [
        f"CREATE TABLE {name} ({body}, "
        f"CONSTRAINT {primary_key_name(table, suffix)} PRIMARY KEY ({key}))"
    ]
    if indexes:
        statements += index_sql(table, suffix)
    return statements


def index_sql(table: Table, suffix: str = "") -> list[str]:
    """The secondary indexes; a rebuild makes them once its rows are in (one sort each
    instead of a million index insertions)."""
    name = table.name + suffix
    return [
        f"CREATE INDEX {index_name(table, columns, suffix)} ON {name} ({', '.join(columns)})"
        for columns in table.indexes
    ]


def upsert_sql(table: Table, suffix: str, values: str) -> str:
    """``INSERT ... <values> ON CONFLICT (key) DO UPDATE``: whole rows, or added counters."""
    name = table.name + suffix
    column_list = ", ".join(table.column_names)
    key = ", ".join(table.key)
    if table.counters:
        updates = ", ".join(f"{c} = {name}.{c} + excluded.{c}" for c in table.counters)
    else:
        updates = ", ".join(f"{c} = excluded.{c}" for c in table.column_names if c not in table.key)
    return (
        f"INSERT INTO {name} ({column_list}) {values} ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


def loadable_key(table: Table) -> str:
    """The key column rows are loaded and deleted by (folds use one-column text keys)."""
    if len(table.key) != 1 or table.counters:
        raise ValueError(f"table {table.name}: rows are loaded by a one-column key only")
    return table.key[0]


def records_for(target: Target, records: Sequence[Recorded]) -> list[Recorded]:
    return [record for record in records if record.position > target.expected]


def parked_values(event: ParkedEvent) -> tuple[Any, ...]:
    """A parked event as its row's values, in `PARKED_COLUMNS` order."""
    return (
        event.projection,
        event.position,
        event.stream,
        event.event_id,
        event.type,
        event.error_type,
        event.error_message,
        event.attempts,
        event.parked_at,
    )


def parked_event(row: Sequence[Any]) -> ParkedEvent:
    """A row of the parked table (`PARKED_COLUMNS` order; ``parked_at`` a datetime)."""
    projection, position, stream, event_id, type_, kind, message, attempts, at = row
    return ParkedEvent(
        projection=projection,
        position=int(position),
        stream=stream,
        event_id=event_id,
        type=type_,
        error_type=kind,
        error_message=message,
        attempts=int(attempts),
        parked_at=at,
    )
