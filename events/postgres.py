"""The PostgreSQL event store: group-committed appends, reads in a safe global order.

Every database call crosses the one bridge to asyncpg (``events.postgres_bridge``); this
module holds the store's SQL and its writer, and uses the bridge's asyncio side only inside
``Database.cross``.

Safe global order (see `PostgresEventStore`): every batch takes one transaction-level
advisory lock before it reads versions or takes positions, and the lock is released only
after its commit is visible. Positions therefore become visible in the order they were
taken, so ``read_all(after=checkpoint)`` never skips an event that committed late. This is
the Message DB approach; PostgreSQL releases a transaction's locks after it has marked the
transaction committed in the proc array (``CommitTransaction``: ``ProcArrayEndTransaction``
runs before ``ResourceOwnerRelease(..LOCKS..)``), which is what makes it hold on 15.
The cost is that writers of one event log (all processes) take turns per batch, which
group commit makes cheap: a batch holds the lock for one server-side call (``append_batch``,
events.migrations) and one WAL flush.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, Final
from uuid import UUID, uuid4

import attrs
import trio

from events._group_commit import (
    AppendRequest,
    ExistingEvent,
    GroupCommitter,
    batch_answers,
    partial_duplicate,
    plan_batch,
)
from events.migrations import POSTGRES_MIGRATIONS, Migration
from events.postgres_bridge import (
    Connection,
    Database,
    InvalidCachedStatement,
    Listener,
    PostgresOptions,
    Record,
    is_connection_error,
    open_database,
    plain_startup_errors,
)
from events.store import (
    ANY_VERSION,
    AppendResult,
    NewEvent,
    RecordedEvent,
    StoreStatistics,
    StoreUnavailable,
    WrongExpectedVersion,
    encode_payloads,
    validate_new_events,
    validate_stream_name,
)

LOG = logging.getLogger(__name__)

#: Advisory locks use the two-int form, a lock space apart from single-bigint users (the
#: shard locks of several processes). First int: "afte" / "aftm" in ASCII.
EVENTS_LOCK_SPACE: Final = 0x61667465
MIGRATIONS_LOCK_SPACE: Final = 0x6166746D

#: How long closing the store waits for queued appends to commit.
CLOSE_TIMEOUT: Final = 10.0
#: First pause before retrying after a lost connection; doubles up to `_MAX_BACKOFF`.
_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0

_COLUMNS = "position, stream, version, type, data, metadata, event_id, recorded_at"


@attrs.frozen
class EventLog:
    """Names that every process writing the same events table agrees on.

    ``lock`` is the advisory lock every writer must hold (transaction-level) while it
    takes positions, and ``channel`` carries the new head after each batch.
    """

    schema: str
    lock: tuple[int, int]
    channel: str

    @property
    def lock_sql(self) -> str:
        return f"SELECT pg_advisory_xact_lock({self.lock[0]}, {self.lock[1]})"


# One index probe per stream and per event id, whatever the planner thinks of the table's
# size: ``event_id = ANY($2)`` was planned as a sequential scan of the whole log, and the
# LIMIT keeps the lateral subquery from being flattened into a join that could be too.
# The planned path (`_write_planned`) and the resolution of a batch whose answer was lost
# read it; ``append_batch`` (events.migrations) needs less, and lets unique indexes say
# what it did not read.
_BATCH_STATE_SQL = """
SELECT s.stream, coalesce(v.version, 0) AS version, NULL::uuid AS event_id,
       NULL::bigint AS position
  FROM unnest($1::text[]) AS s(stream)
  CROSS JOIN LATERAL (SELECT max(e.version) AS version FROM events e
                       WHERE e.stream = s.stream) AS v
UNION ALL
SELECT e.stream, e.version, e.event_id, e.position
  FROM unnest($2::uuid[]) AS i(event_id)
  CROSS JOIN LATERAL (SELECT e.stream, e.version, e.event_id, e.position FROM events e
                       WHERE e.event_id = i.event_id LIMIT 1) AS e
"""


#: One call, autocommit: the whole batch in one round trip (`events.migrations`).
_APPEND_BATCH_CALL = """
SELECT kind, starts, positions, first_pos, last_pos
  FROM append_batch($1, $2, $3, $4, $5, $6::uuid[], $7::text[], $8::int[], $9::int[],
                    $10::int[], $11::int[], $12::text[], $13::jsonb[], $14::jsonb[],
                    $15::uuid[], $16)
"""

# The batch ``append_batch`` leaves to `plan_batch`: rows fed in batch order, so positions
# follow versions within a stream; matched back by event id all the same. pg_notify runs
# once (one aggregate row), and the writer's token is recorded in the same transaction.
_INSERT_SQL = """
WITH inserted AS (
  INSERT INTO events (stream, category, version, type, data, metadata, event_id)
  SELECT stream, category, version, type, data, metadata, event_id
    FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::jsonb[],
                $7::uuid[]) WITH ORDINALITY
         AS r(stream, category, version, type, data, metadata, event_id, ord)
   ORDER BY ord
  RETURNING event_id, position
), writer AS (
  INSERT INTO event_writers (writer_id, token, first_position, last_position)
  SELECT $9, $10, min(position), max(position) FROM inserted
  ON CONFLICT ON CONSTRAINT event_writers_pkey DO UPDATE
     SET token = excluded.token, first_position = excluded.first_position,
         last_position = excluded.last_position
)
SELECT array_agg(event_id) AS event_ids, array_agg(position) AS positions,
       pg_notify($8, max(position)::text)
  FROM inserted
"""

#: Each request's answer: its result, or the error its caller gets.
Answer = AppendResult | BaseException


@attrs.frozen
class _BatchOutcome:
    answers: list[Answer]  # one per request, in batch order


@attrs.define
class _BatchAttempt:
    """One call of ``append_batch``: what a retry needs if its answer never arrives."""

    token: UUID = attrs.field(factory=uuid4)
    sent: bool = False
    #: (pid, backend_start) of the server process that got the call.
    backend: tuple[int, datetime] | None = None


@attrs.define(eq=False)
class _WriterConnection:
    """The writer's own connection, outside the pool, held across batches.

    Held so a batch pays no acquire/reset round trip; outside the pool so that when the
    server drops it, nothing else (the pool's bookkeeping) owns it: the next batch simply
    opens a new one. ``writer_id`` names this writer in ``event_writers``.
    """

    database: Database
    conn: Any = None
    writer_id: UUID = attrs.field(factory=uuid4)
    backend: tuple[int, datetime] | None = None

    async def get(self) -> Any:  # asyncio side
        if self.conn is not None and self.conn.is_closed():
            self.drop()
        if self.conn is None:
            conn = await self.database.connect_outside_pool()
            try:
                row = await conn.fetchrow(
                    "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                )
            except BaseException:
                conn.terminate()
                raise
            self.conn, self.backend = conn, (row[0], row[1])
        return self.conn

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:  # asyncio side
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()


async def write_batch_sql(
    writer: _WriterConnection,
    log: EventLog,
    batch: Sequence[AppendRequest],
    attempt: _BatchAttempt,
    lost: Sequence[_BatchAttempt] = (),
    commit_delay: float = 0.0,
) -> _BatchOutcome:
    """One batch, one call of ``append_batch``, one round trip (asyncio side, one crossing).

    The function takes the log's advisory lock, decides every request as `plan_batch`
    would, inserts the rows, NOTIFYs the new head, and commits (autocommit): see
    `events.migrations`. ``lost`` are earlier attempts at this batch whose answers never
    came: their server processes are ended first (a call whose client has gone may still be
    running), then the function says whether one of them committed, and if so the batch is
    resolved from what it wrote.

    ``commit_delay`` (tests only) sleeps in PostgreSQL after the positions are taken and
    before the commit, as a slow network or a busy disk would.
    """
    conn = await writer.get()
    try:
        for earlier in lost:
            if earlier.backend is not None and earlier.backend != writer.backend:
                await conn.fetchval(_END_BACKEND_SQL, *earlier.backend)
        streams: list[str] = []
        expected: list[int | None] = []
        before: list[int] = []  # events of earlier requests of the same stream
        seen: dict[str, int] = {}
        requests: list[int] = []
        places: list[int] = []
        types: list[str] = []
        data: list[str] = []
        metadata: list[str] = []
        ids: list[UUID] = []
        for number, request in enumerate(batch, 1):
            streams.append(request.stream)
            expected.append(request.expected_version)
            ahead = seen.get(request.stream, 0)
            before.append(ahead)
            seen[request.stream] = ahead + len(request.events)
            for place, (event, (payload, meta)) in enumerate(
                zip(request.events, request.payloads, strict=True), 1
            ):
                requests.append(number)
                places.append(place)
                types.append(event.type)
                data.append(payload)
                metadata.append(meta)
                ids.append(event.event_id)
        attempt.backend = writer.backend
        attempt.sent = True
        rows = await conn.fetch(
            _APPEND_BATCH_CALL,
            log.lock[0],
            log.lock[1],
            log.channel,
            writer.writer_id,
            attempt.token,
            [earlier.token for earlier in lost],
            streams,
            expected,
            before,
            requests,
            places,
            types,
            data,
            metadata,
            ids,
            commit_delay,
        )
        [(kind, starts, positions, first, last)] = rows
        if kind == "committed":
            return await _resolve_committed(conn, batch, first, last)
        if kind == "replan":
            return await _write_planned(conn, writer, log, batch, attempt, commit_delay)
        if kind != "ok":
            raise StoreUnavailable(f"append_batch answered {kind!r}")
    except BaseException as exc:
        # Cancelled mid-call or connection lost: the server rolls back what was not
        # committed when it notices the connection has gone (and `lost` makes sure).
        if not isinstance(exc, Exception) or is_connection_error(exc):
            writer.drop()
        raise
    return _BatchOutcome(_answers(batch, starts, positions))


# pid and start time together: a pid alone may since have been given to another process.
_END_BACKEND_SQL = (
    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
    "WHERE pid = $1 AND backend_start = $2"
)


def _answers(
    batch: Sequence[AppendRequest], starts: Sequence[int], positions: Sequence[int]
) -> list[Answer]:
    """Each request's result from a written batch: the stream's version before it plus its
    events, and the position of its last event (``positions`` run in request order)."""
    answers: list[Answer] = []
    end = 0
    for request, start in zip(batch, starts, strict=True):
        count = len(request.events)
        end += count
        answers.append(AppendResult(version=start + count, position=positions[end - 1]))
    if end != len(positions):
        raise StoreUnavailable(f"append_batch wrote {len(positions)} events of {end}")
    return answers


async def _write_planned(
    conn: Any,
    writer: _WriterConnection,
    log: EventLog,
    batch: Sequence[AppendRequest],
    attempt: _BatchAttempt,
    commit_delay: float,
) -> _BatchOutcome:
    """The batch ``append_batch`` would not write (a duplicate, a conflict), decided by
    `plan_batch` in one transaction under the log's lock: four round trips, rarely paid."""
    await conn.execute("BEGIN; " + log.lock_sql)
    try:
        versions, existing = await _batch_state(conn, batch)
        plan = plan_batch(batch, versions, existing)
        if not plan.rows:
            await conn.execute("ROLLBACK")
            return _BatchOutcome(batch_answers(batch, plan, []))
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        stream_col, category_col, version_col, type_col, data_col, meta_col, id_col = columns
        next_payload: dict[int, int] = {}
        for row in plan.rows:
            index = next_payload.get(row.request_index, 0)
            next_payload[row.request_index] = index + 1
            data, metadata = batch[row.request_index].payloads[index]
            stream_col.append(row.stream)
            category_col.append(row.stream.split("-", 1)[0])
            version_col.append(row.version)
            type_col.append(row.event.type)
            data_col.append(data)
            meta_col.append(metadata)
            id_col.append(row.event.event_id)
        result = await conn.fetchrow(
            _INSERT_SQL, *columns, log.channel, writer.writer_id, attempt.token
        )
        position_of = dict(zip(result["event_ids"], result["positions"], strict=True))
        positions = [position_of[row.event.event_id] for row in plan.rows]
        if commit_delay:
            await conn.execute("SELECT pg_sleep($1)", commit_delay)
        await conn.execute("COMMIT")
    except Exception as exc:
        if not is_connection_error(exc):
            await conn.execute("ROLLBACK")
        raise
    return _BatchOutcome(batch_answers(batch, plan, positions))


async def _batch_state(
    conn: Any, batch: Sequence[AppendRequest]
) -> tuple[dict[str, int], dict[UUID, ExistingEvent]]:
    """The committed version of each of the batch's streams, and its already-recorded ids."""
    streams = sorted({request.stream for request in batch})
    ids = [event.event_id for request in batch for event in request.events]
    versions: dict[str, int] = {}
    existing: dict[UUID, ExistingEvent] = {}
    for stream, version, event_id, position in await conn.fetch(_BATCH_STATE_SQL, streams, ids):
        if event_id is None:
            versions[stream] = version
        else:
            existing[event_id] = ExistingEvent(stream, version, position)
    return versions, existing


async def _resolve_committed(
    conn: Any, batch: Sequence[AppendRequest], first: int, last: int
) -> _BatchOutcome:
    """Answer a batch from what its lost call wrote (positions ``first``..``last``).

    A request whose events all lie in that range (and were not claimed by an earlier
    request of the batch: the same ids twice) was written: it gets its own positions and
    ``duplicate=False``, as it would have. The others were decided without writing, and
    are decided again against the log as it is now: duplicate, partial or conflict.
    """
    versions, existing = await _batch_state(conn, batch)
    claimed: set[UUID] = set()
    answers: list[Answer] = []
    for request in batch:
        wanted = [event.event_id for event in request.events]
        hits = [existing[i] for i in wanted if i in existing]
        ours = [hit for hit in hits if first <= hit.position <= last]
        if len(ours) == len(wanted) and claimed.isdisjoint(wanted):
            claimed.update(wanted)
            answers.append(AppendResult(version=ours[-1].version, position=ours[-1].position))
        elif hits and len(hits) == len(wanted):
            answers.append(
                AppendResult(version=hits[-1].version, position=hits[-1].position, duplicate=True)
            )
        elif hits:
            answers.append(partial_duplicate(request, len(hits)))
        elif request.expected_version is not None:
            answers.append(
                WrongExpectedVersion(
                    request.stream, request.expected_version, versions.get(request.stream, 0)
                )
            )
        else:  # pragma: no cover - a request with new ids and no expectation is written
            answers.append(StoreUnavailable(f"cannot resolve the append to {request.stream!r}"))
    return _BatchOutcome(answers)


@attrs.define(eq=False)
class PostgresEventStore:
    """The production event store: many processes may share one PostgreSQL database.

    Appends are group-committed by one writer task (`GroupCommitter`). ``read_all`` is a
    plain ``position > after`` scan: the advisory lock held by every batch makes that safe
    (see the module docstring). Waiting readers are woken by NOTIFY (this process's own
    commits wake them directly); while the LISTEN connection is down they re-check every
    ``fallback_interval`` seconds instead.

    Retries after a lost connection (within ``database.retry_for``):
    - reads are retried: they change nothing;
    - a batch whose call was never sent is retried whole;
    - a batch whose call went unanswered is resolved, not guessed: every call carries a
      token, and a call that writes records it in ``event_writers`` in its own
      transaction. The retry ends the old call's server process (so it has committed or
      rolled back), then, under the log's lock, asks whether one of its lost tokens is
      recorded. Committed: callers get the answers they would have had (``duplicate=False``
      and their positions, from the range it wrote). Not committed: the batch is decided
      afresh. Deciding afresh alone would be safe for the log (event ids make it
      idempotent) but would answer ``duplicate=True`` to the caller whose own append it
      was, and a caller that reads "duplicate" as "someone else already handled this
      webhook" would skip work.
    """

    database: Database
    log: EventLog
    fallback_interval: float = 1.0
    max_batch: int = 500
    #: Batches in flight (`GroupCommitter.writers`), each on a writer connection of its own.
    #: One: with 100 writers, two measured about a quarter slower (half-size batches, and
    #: each waits on the server for the other's lock).
    writers: int = 1
    _committer: GroupCommitter = attrs.field(init=False)
    _idle_writers: list[_WriterConnection] = attrs.field(init=False)
    _all_writers: tuple[_WriterConnection, ...] = attrs.field(init=False)
    _listener: Listener = attrs.field(init=False)
    _wakeup: trio.Event = attrs.field(factory=trio.Event)
    _head: int = 0
    _duplicates: int = 0
    _conflicts: int = 0

    def __attrs_post_init__(self) -> None:
        self._committer = GroupCommitter(
            self._write_batch, max_batch=self.max_batch, writers=self.writers
        )
        self._all_writers = tuple(_WriterConnection(self.database) for _ in range(self.writers))
        self._idle_writers = list(self._all_writers)
        self._listener = Listener(
            self.database, self.log.channel, self._on_notify, lambda _c: self._wake()
        )

    # -- the contract ---------------------------------------------------------------------
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
        rows = await self.database.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream = $1 AND version >= $2 "
            "ORDER BY version LIMIT $3",
            stream,
            from_version,
            limit,
            retry=True,
        )
        return [_recorded(row) for row in rows]

    async def stream_version(self, stream: str) -> int:
        validate_stream_name(stream)
        version = await self.database.fetchval(
            "SELECT max(version) FROM events WHERE stream = $1", stream, retry=True
        )
        return int(version or 0)

    async def read_all(
        self, after: int = 0, limit: int = 1000, category: str | None = None
    ) -> list[RecordedEvent]:
        if category is None:
            rows = await self.database.fetch(
                f"SELECT {_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2",
                after,
                limit,
                retry=True,
            )
        else:
            rows = await self.database.fetch(
                f"SELECT {_COLUMNS} FROM events WHERE category = $1 AND position > $2 "
                "ORDER BY position LIMIT $3",
                category,
                after,
                limit,
                retry=True,
            )
        return [_recorded(row) for row in rows]

    async def head(self) -> int:
        head = await self.database.fetchval(
            "SELECT coalesce(max(position), 0) FROM events", retry=True
        )
        self._head = max(self._head, int(head))
        return self._head

    async def wait_for_events(self, after: int) -> None:
        while True:
            woken = self._wakeup  # taken before looking, so no commit slips in between
            if self._head > after or await self.head() > after:
                return
            if self._listener.connected:
                await woken.wait()
            else:
                with trio.move_on_after(self.fallback_interval):
                    await woken.wait()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            backend="postgres",
            appends=self._committer.appends,
            batches=self._committer.batches,
            duplicates=self._duplicates,
            conflicts=self._conflicts,
            head=self._head,
        )

    @property
    def listening(self) -> bool:
        """Is the LISTEN connection up (waiters need no re-check)?"""
        return self._listener.connected

    # -- the writer -----------------------------------------------------------------------
    async def _write_batch(self, batch: list[AppendRequest]) -> None:
        writer = self._idle_writers.pop()  # one per committer loop: never empty here
        try:
            outcome = await self.commit_batch(batch, writer=writer)
        finally:
            self._idle_writers.append(writer)
        written: list[int] = []
        for request, answer in zip(batch, outcome.answers, strict=True):
            if isinstance(answer, BaseException):
                self._conflicts += 1
                request.fail(answer)
                continue
            if answer.duplicate:
                self._duplicates += 1
            else:
                written.append(answer.position)
            request.succeed(answer)
        if written:
            self._head = max(self._head, max(written))
            self._wake()

    async def commit_batch(
        self,
        batch: Sequence[AppendRequest],
        *,
        writer: _WriterConnection | None = None,
        commit_delay: float = 0.0,
    ) -> _BatchOutcome:
        """Write one batch through `write_batch_sql`, retrying lost connections safely.

        A call that failed before it was sent is simply made again. A call whose answer was
        lost is remembered (its token and server process), and every retry passes them on,
        so the batch is answered as it was decided, never re-decided as a duplicate of
        itself.

        The group committer calls it with one of the store's writer connections. Tests call it
        from many tasks at once, each with a connection of its own (`separate_writer`)
        and a ``commit_delay``, to play several processes committing late.
        """
        writer = self._all_writers[0] if writer is None else writer
        deadline = trio.current_time() + self.database.retry_for
        delay = _FIRST_BACKOFF
        lost: list[_BatchAttempt] = []
        while True:
            attempt = _BatchAttempt()
            try:
                return await self.database.cross(
                    write_batch_sql, writer, self.log, batch, attempt, lost, commit_delay
                )
            except InvalidCachedStatement:
                # A migration by another process changed the table; the call failed and
                # wrote nothing: run it again.
                if trio.current_time() > deadline:
                    raise
                continue
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if attempt.sent:
                    lost.append(attempt)
                reason = self.database.target.reason(exc)
                if trio.current_time() + delay > deadline:
                    raise StoreUnavailable(
                        f"PostgreSQL at {self.database.address} unreachable for "
                        f"{self.database.retry_for:g} s; the append "
                        + ("may or may not have" if lost else "has not")
                        + f" been recorded ({reason})"
                    ) from exc
                LOG.warning(
                    "append batch: lost the connection to PostgreSQL at %s (%s); retrying",
                    self.database.address,
                    reason,
                )
            await trio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    @asynccontextmanager
    async def separate_writer(self) -> AsyncIterator[_WriterConnection]:
        """A writer connection of its own for `commit_batch`, as another process has."""
        writer = _WriterConnection(self.database)
        try:
            yield writer
        finally:
            with trio.CancelScope(shield=True):
                await self.database.cross(writer.close)

    def _on_notify(self, payload: str) -> None:
        try:
            head = int(payload)
        except ValueError:
            LOG.warning("ignoring a notification on %s that is not a position", self.log.channel)
            return
        if head > self._head:
            self._head = head
            self._wake()

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()


def _recorded(row: Record) -> RecordedEvent:
    return RecordedEvent(
        position=row[0],
        stream=row[1],
        version=row[2],
        type=row[3],
        data=json.loads(row[4]),
        metadata=json.loads(row[5]),
        event_id=row[6],
        recorded_at=row[7],
    )


# -- migrations ---------------------------------------------------------------------------
async def _migrate(
    conn: Connection, schema: str | None, migrations: Sequence[Migration]
) -> tuple[str, int]:
    """Apply what is missing under an advisory lock; return (schema, events lock key).

    Two processes starting at once take turns on the lock, and the second finds the work
    done. ``CREATE SCHEMA IF NOT EXISTS`` is under the lock too: run concurrently it can
    fail on a unique violation in the catalog.
    """
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATIONS_LOCK_SPACE}, 0)")
        if schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        applied = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in applied:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        row = await conn.fetchrow(
            "SELECT current_schema() AS schema, hashtext(current_schema() || '.events') AS key"
        )
    assert row is not None
    return str(row["schema"]), int(row["key"])


def _channel_for(schema: str) -> str:
    # A NOTIFY channel is database-wide, so it names the schema; 63 bytes at most.
    # (Python's hash() differs between processes; every writer must agree on the name.)
    channel = f"{schema}.events"
    if len(channel.encode()) < 63:
        return channel
    return "aftercall_events_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


def open_postgres_store(
    dsn: str,
    options: PostgresOptions | None = None,
    *,
    fallback_interval: float = 1.0,
    max_batch: int = 500,
    writers: int = 1,
) -> AbstractAsyncContextManager[PostgresEventStore]:
    """Open (migrating) the store; its writer and listener live until the block ends.

    On exit, appends already queued are written (within `CLOSE_TIMEOUT`), then the
    listener, the writer's connection, the pool and the loop are closed. ``store.database``
    is the same pool, for projections' read models.

    Connections: up to ``pool_size`` pooled, plus the writer's and the listener's.
    Like `open_database`, own it from one long-lived task (under Hypercorn, started
    from ``before_serving`` with ``await app.nursery.start(...)``) and use the store from
    any task.
    """
    return plain_startup_errors(
        _open_postgres_store(
            dsn,
            options or PostgresOptions(),
            fallback_interval=fallback_interval,
            max_batch=max_batch,
            writers=writers,
        )
    )


@asynccontextmanager
async def _open_postgres_store(
    dsn: str,
    options: PostgresOptions,
    *,
    fallback_interval: float,
    max_batch: int,
    writers: int,
) -> AsyncIterator[PostgresEventStore]:
    async with open_database(dsn, options) as database:
        current_schema, key = await database.run(
            _migrate, options.schema, POSTGRES_MIGRATIONS, retry=True
        )
        log = EventLog(current_schema, (EVENTS_LOCK_SPACE, key), _channel_for(current_schema))
        store = PostgresEventStore(
            database,
            log,
            fallback_interval=fallback_interval,
            max_batch=max_batch,
            writers=writers,
        )
        try:
            async with trio.open_nursery() as background:
                await background.start(store._listener.run)
                await store.head()  # after LISTEN: nothing committed in between is missed
                try:
                    async with trio.open_nursery() as writer:
                        await writer.start(store._committer.run)
                        try:
                            yield store
                        finally:
                            # Queued appends were promised durability: let them commit.
                            store._committer.close()
                            writer.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                finally:
                    background.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for writer_connection in store._all_writers:
                    await database.cross(writer_connection.close)
