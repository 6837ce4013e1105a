"""What a projection is: tables it owns, and two plain functions over the log's records.

A projection never reads its tables while folding. For each page of events the runner asks
``wants(record)`` which rows (by primary key) the events touch, loads exactly those in one
query per table, lets ``apply(rows, record)`` fold every event into that in-memory
`RowSet`, and writes back only what changed, all in the transaction that moves the
projection's checkpoint. That keeps the rules plain functions over values (tested without a
database), makes a page cost a handful of statements whatever its size, and lets the same
folds run on PostgreSQL and SQLite.

Every key a fold needs must be computable from the event alone (a MessageSid, a reply id,
a phone): that is the one constraint the folds are written around.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from operator import itemgetter
from typing import Any, Literal, NamedTuple, Protocol

import attrs

ColumnType = Literal["text", "int", "float", "time", "bool"]
Row = dict[str, Any]
Key = tuple[Any, ...]


class Recorded(Protocol):
    """What a fold may read of an event in the log.

    The store's `events.store.RecordedEvent` is one. So is `LogEvent`, what the
    projections' own reads of the log make: a rebuild folds a million of them, and the
    version, id and metadata no fold reads cost a quarter of the read's time to decode.
    """

    @property
    def position(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...
    @property
    def recorded_at(self) -> datetime: ...


class LogEvent(NamedTuple):
    """An event as the projections read it: only what folds use (see `Recorded`).

    A named tuple: made in C, several times faster than a frozen attrs class.
    """

    position: int
    stream: str
    type: str
    data: Mapping[str, Any]
    recorded_at: datetime


class LogPage:
    """One read of the log: the events a reader asked for, and how far it read.

    ``last`` is the position of the last event in the page's window, kept or not (None:
    nothing past ``after`` yet): a checkpoint moves there, so events no rule folds are
    never read again, and a follower of a projection that folds none of the latest
    events still reports that it has projected them. ``read`` counts the window's events.

    ``records`` are decoded when first asked for, not when read: a rebuild decodes them
    where it folds, with the cycle collector paused (see ``runner._fold_aside``), so the
    page's hundred thousand new objects are not walked by it two or three times first.
    """

    __slots__ = ("_decode", "_records", "last", "read")

    def __init__(
        self,
        records: list[Recorded] | Callable[[], list[Recorded]],
        last: int | None,
        read: int = 0,
    ) -> None:
        self._records = records if isinstance(records, list) else None
        self._decode = None if isinstance(records, list) else records
        self.last = last
        self.read = read

    @property
    def records(self) -> list[Recorded]:
        if self._records is None:
            assert self._decode is not None
            self._records, self._decode = self._decode(), None
        return self._records


@attrs.frozen
class Column:
    name: str
    type: ColumnType


def columns(spec: str) -> tuple[Column, ...]:
    """``"phone text, created_at time"`` -> Columns: table definitions that read like DDL."""
    parsed = []
    for item in spec.split(","):
        name, type_ = item.split()
        if type_ not in ("text", "int", "float", "time", "bool"):
            raise ValueError(f"column {name}: unknown type {type_!r}")
        parsed.append(Column(name, type_))  # type: ignore[arg-type]  # checked just above
    return tuple(parsed)


@attrs.frozen
class Table:
    """A read-model table.

    ``key`` is the primary key. Tables with ``counters`` are additive: they are never
    loaded, their rows are written as increments of those columns (``count = count + n``),
    so a page adds to them without reading them first.
    """

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    counters: tuple[str, ...] = ()
    #: Derived once: folds put hundreds of thousands of rows in a rebuild.
    column_names: tuple[str, ...] = attrs.field(init=False)
    column_set: frozenset[str] = attrs.field(init=False)
    #: A row's values in column order, as a tuple (``operator.itemgetter``: one C call,
    #: a third of what a comprehension costs).
    values_of: Callable[[Mapping[str, Any]], tuple[Any, ...]] = attrs.field(
        init=False, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        names = tuple(c.name for c in self.columns)
        object.__setattr__(self, "column_names", names)
        object.__setattr__(self, "column_set", frozenset(names))
        if len(names) == 1:  # itemgetter of one name returns the value, not a tuple
            only = names[0]
            object.__setattr__(self, "values_of", lambda row: (row[only],))
        else:
            object.__setattr__(self, "values_of", itemgetter(*names))
        for column in (*self.key, *self.counters, *(c for i in self.indexes for c in i)):
            if column not in names:
                raise ValueError(f"table {self.name}: {column!r} is not one of its columns")

    def key_of(self, row: Mapping[str, Any]) -> Key:
        if len(self.key) == 1:
            return (row[self.key[0]],)
        return tuple(row[name] for name in self.key)


#: Which rows (table name, primary key) folding an event reads, from its subject and data.
Wants = Callable[[str, Mapping[str, Any]], Iterable[tuple[str, Key]]]
#: Fold one event about ``subject`` into the rows (mutating the `RowSet`).
Apply = Callable[["RowSet", str, Recorded], None]


@attrs.frozen
class Rule:
    """How a projection folds one type of event."""

    apply: Apply
    wants: Wants = lambda _subject, _data: ()


def _stream_id(record: Recorded) -> str | None:
    return record.stream.partition("-")[2] or None


@attrs.frozen
class Projection:
    """A named read model: its tables and its rules, one per event type it folds.

    ``version`` names the shape of the tables and the meaning of the rules: when it
    changes, the tables on disk were built by other rules, and the runner rebuilds them
    aside before it projects anything new into them. ``subject`` says which entity (a
    phone) a record is about; records without one, and types without a rule, are skipped.
    """

    name: str
    version: int
    tables: tuple[Table, ...]
    rules: Mapping[str, Rule]
    subject: Callable[[Recorded], str | None] = _stream_id

    def table(self, name: str) -> Table:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"projection {self.name} has no table {name}")

    def fold(self, rows: RowSet, records: Iterable[Recorded]) -> None:
        """Fold ``records`` into ``rows`` as `plan` then each rule would, in one pass:
        for a rebuild, whose rows are all at hand and need no plan to be loaded."""
        applies = {name: rule.apply for name, rule in self.rules.items()}
        subject_of = self.subject
        for record in records:
            apply = applies.get(record.type)
            if apply is None:
                continue
            subject = subject_of(record)
            if subject is not None:
                apply(rows, subject, record)

    def plan(self, records: Iterable[Recorded]) -> list[tuple[Rule, str, Recorded]]:
        """The records this projection folds, each with its rule and subject."""
        planned = []
        rules = self.rules
        for record in records:
            rule = rules.get(record.type)
            if rule is None:
                continue
            subject = self.subject(record)
            if subject is not None:
                planned.append((rule, subject, record))
        return planned


@attrs.frozen
class Changes:
    """What one page did to one table: whole rows to upsert, keys to delete, increments.

    Rows are tuples in the table's column order, taken when the page was folded: a later
    page may change the same row while this one is still being written.
    """

    table: Table
    upserts: list[tuple[Any, ...]]
    deletes: list[Key]
    increments: list[tuple[Any, ...]]
    #: Rows known not to be in the table yet (plain inserts, see `RowSet.take_changes`).
    inserts: list[tuple[Any, ...]] = attrs.field(factory=list)


class RowSet:
    """The rows one page of events reads and writes, keyed by table and primary key.

    Loaded rows and rows written by earlier events of the page are both here, so events of
    one page see each other's effects exactly as if they had been folded one by one. A
    row is a plain dict: take it with `get`, change it, hand it back with `put`.
    """

    def __init__(self, tables: Iterable[Table]) -> None:
        self._tables = {table.name: table for table in tables}
        self._rows: dict[str, dict[Key, Row | None]] = {name: {} for name in self._tables}
        # Changed rows by key (None: deleted), so writing them needs no second lookup in
        # ``_rows``, which in a rebuild holds every row of the table.
        self._dirty: dict[str, dict[Key, Row | None]] = {name: {} for name in self._tables}
        self._increments: dict[str, dict[Key, Row]] = {name: {} for name in self._tables}
        self._written: dict[str, set[Key]] = {name: set() for name in self._tables}
        # One lookup per put: it runs for nearly every event of a rebuild.
        self._put_into = {
            name: (
                self._rows[name],
                self._dirty[name],
                len(table.columns),
                table.key[0] if len(table.key) == 1 else None,
                table.key,
            )
            for name, table in self._tables.items()
        }

    def load(self, table: str, rows: Iterable[Row]) -> None:
        """Rows read from the database (before any event of the page is folded)."""
        spec = self._tables[table]
        known = self._rows[table]
        for row in rows:
            known[spec.key_of(row)] = row

    def get(self, table: str, *key: Any) -> Row | None:
        """The row with this key, or None if there is none (or it was deleted)."""
        return self._rows[table].get(key)

    def put(self, table: str, row: Row) -> Row:
        """Insert or replace a row (it must carry every column of the table).

        A row with too few or too many columns is refused here. One with the right number
        but a wrong name (a column missing, another in its place) is refused when the
        changes are taken (`Changes`): comparing every name on every put cost more than
        a rule's own work, and a rebuild puts twice per event.
        """
        rows, dirty, width, key_column, key_columns = self._put_into[table]
        if len(row) != width:
            raise _wrong_columns(self._tables[table], row)
        try:
            key = (row[key_column],) if key_column is not None else _key(row, key_columns)
        except KeyError:
            raise _wrong_columns(self._tables[table], row) from None
        rows[key] = row
        dirty[key] = row
        return row

    def delete(self, table: str, *key: Any) -> None:
        self._rows[table][key] = None
        self._dirty[table][key] = None

    def add(self, table: str, *key: Any, **amounts: int | float) -> None:
        """Add to the counters of an additive table's row (created at zero if missing)."""
        spec = self._tables[table]
        pending = self._increments[table].get(key)
        if pending is None:
            pending = dict(zip(spec.key, key, strict=True))
            for column in spec.counters:
                pending[column] = 0
            self._increments[table][key] = pending
        for column, amount in amounts.items():
            pending[column] += amount

    def changes(self) -> Iterator[Changes]:
        for name, spec in self._tables.items():
            upserts: list[tuple[Any, ...]] = []
            deletes: list[Key] = []
            values_of = spec.values_of
            try:
                for key, row in self._dirty[name].items():
                    if row is None:
                        deletes.append(key)
                    else:
                        upserts.append(values_of(row))
                increments = [values_of(row) for row in self._increments[name].values()]
            except KeyError:
                raise _first_wrong_row(spec, self._dirty[name].values()) from None
            if upserts or deletes or increments:
                yield Changes(spec, upserts, deletes, increments)

    def take_changes(self) -> list[Changes]:
        """The changes since the last call; the rows stay, a cache for the next page.

        Only for a `RowSet` that has seen every row of its tables from the start (a
        rebuild into empty tables): then a row it never handed out before is known not to
        be in the table, and goes in as a plain insert.
        """
        taken = []
        for name, spec in self._tables.items():
            inserts: list[tuple[Any, ...]] = []
            upserts: list[tuple[Any, ...]] = []
            deletes: list[Key] = []
            known = self._rows[name]
            written = self._written[name]
            values_of = spec.values_of
            dirty = self._dirty[name]
            try:
                for key, row in dirty.items():
                    if row is None:
                        known.pop(key)
                        if key in written:
                            written.discard(key)
                            deletes.append(key)
                    elif key in written:
                        upserts.append(values_of(row))
                    else:
                        written.add(key)
                        inserts.append(values_of(row))
                increments = [values_of(row) for row in self._increments[name].values()]
            except KeyError:
                raise _first_wrong_row(spec, dirty.values()) from None
            if inserts or upserts or deletes or increments:
                taken.append(Changes(spec, upserts, deletes, increments, inserts))
            dirty.clear()
            self._increments[name].clear()
        return taken

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._rows.values())


def _key(row: Row, columns: tuple[str, ...]) -> Key:
    return tuple(row[c] for c in columns)


def _wrong_columns(table: Table, row: Row) -> ValueError:
    wrong = sorted(table.column_set.symmetric_difference(row))
    return ValueError(f"row for {table.name}: missing or unknown columns {', '.join(wrong)}")


def _first_wrong_row(table: Table, rows: Iterable[Row | None]) -> ValueError:
    for row in rows:
        if row is not None and row.keys() != table.column_set:
            return _wrong_columns(table, row)
    raise AssertionError(f"no row of {table.name} lacks a column, yet one was missing")


def wanted_keys(plan: Iterable[tuple[Rule, str, Recorded]]) -> dict[str, set[Key]]:
    """Every row a page reads, grouped by table."""
    wanted: dict[str, set[Key]] = {}
    for rule, subject, record in plan:
        for table, key in rule.wants(subject, record.data):
            found = wanted.get(table)
            if found is None:
                wanted[table] = found = set()
            found.add(key)
    return wanted


def fold_page(
    projection: Projection,
    loaded: Mapping[str, Iterable[Row]],
    plan: Iterable[tuple[Rule, str, Recorded]],
) -> RowSet:
    """Fold a page (its `Projection.plan`) over the rows it loaded: what to write."""
    rows = RowSet(projection.tables)
    for table, found in loaded.items():
        rows.load(table, found)
    for rule, subject, record in plan:
        rule.apply(rows, subject, record)
    return rows
