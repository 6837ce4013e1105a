"""The PostgreSQL event store, and the one bridge between Trio and asyncpg.

asyncpg is asyncio-only; aftercall is Trio. Every database call crosses trio-asyncio, and
this module is the only place allowed to import asyncpg or trio_asyncio (a check enforces
it), so the traps measured in ../shared/notes/stack.md are handled once:

- The loop is always passed explicitly (``loop.run_aio_coroutine``). Hypercorn request
  handlers are not children of the task that opened the loop, so trio-asyncio's context
  variable is ``None`` there; nothing here relies on it.
- A crossing costs ~0.4 ms of CPU, so a unit of work is one asyncio coroutine run on one
  connection in one crossing (`Database.run`, `Database.transaction`), and appends are
  group-committed: one crossing and one transaction per batch of whatever is waiting.
- trio-asyncio's default exception handler turns any stray asyncio error into a crash of
  the loop's nursery (and the pool with it); ours logs instead.

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
import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, Final, Protocol, TypeVar, TypeVarTuple, cast
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID, uuid4

import asyncpg
import attrs
import trio
import trio_asyncio

from events._group_commit import (
    AppendRequest,
    ExistingEvent,
    GroupCommitter,
    batch_answers,
    partial_duplicate,
    plan_batch,
)
from events.migrations import POSTGRES_MIGRATIONS, Migration
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

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: Advisory locks use the two-int form, a lock space apart from single-bigint users (the
#: shard locks of several processes). First int: "afte" / "aftm" in ASCII.
EVENTS_LOCK_SPACE: Final = 0x61667465
MIGRATIONS_LOCK_SPACE: Final = 0x6166746D

#: How long closing the store waits for queued appends to commit.
CLOSE_TIMEOUT: Final = 10.0
#: First pause before retrying after a lost connection; doubles up to `_MAX_BACKOFF`.
_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")
_COLUMNS = "position, stream, version, type, data, metadata, event_id, recorded_at"


# -- what callers see of a connection ------------------------------------------------------
class Record(Protocol):
    """A result row (asyncpg's ``Record``): index by position or by column name."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def __len__(self) -> int: ...
    def get(self, key: str, default: Any = None, /) -> Any: ...
    def keys(self) -> Iterator[str]: ...
    def values(self) -> Iterator[Any]: ...
    def items(self) -> Iterator[tuple[str, Any]]: ...


class Transaction(Protocol):
    """``async with conn.transaction():`` commits on success, rolls back on error."""

    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc_info: object) -> Any: ...


class Connection(Protocol):
    """The part of an asyncpg connection that functions given to `Database.run` may use.

    They are *asyncio* coroutine functions: they run on the bridge's loop, so they await
    these methods directly and must not call Trio. Bound a call with ``trio.fail_after``
    around the `Database` method: a Trio cancellation cancels the asyncio side.
    """

    async def fetch(self, query: str, *args: Any) -> list[Record]: ...

    async def fetchrow(self, query: str, *args: Any) -> Record | None: ...

    async def fetchval(self, query: str, *args: Any, column: int = 0) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...

    async def executemany(self, command: str, args: Iterable[Sequence[Any]]) -> None: ...

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Iterable[Sequence[Any]],
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
    ) -> str: ...

    def transaction(
        self, *, isolation: str | None = None, readonly: bool = False, deferrable: bool = False
    ) -> Transaction: ...


@attrs.frozen
class Notification:
    """One NOTIFY, or (``resync=True``, empty payload) a sign that some may have been missed.

    A resync item is delivered each time the listening connection is (re)established and
    after the buffer overflowed: notifications sent while nobody listened are gone, so the
    consumer re-reads whatever state it follows.
    """

    channel: str
    payload: str
    resync: bool = False


# -- addresses and secrets ----------------------------------------------------------------
@attrs.frozen
class _Target:
    """Where the database is, for messages; and the secrets that must never be shown."""

    address: str  # host:port/database, no user, no password
    secrets: tuple[str, ...] = attrs.field(repr=False)

    @classmethod
    def parse(cls, dsn: str) -> _Target:
        try:
            parts = urlsplit(dsn)
            port = parts.port or 5432
        except ValueError:
            raise StoreUnavailable("DATABASE_URL is not a valid postgresql:// URL") from None
        query = parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["localhost"])[0]
        database = parts.path.lstrip("/") or (query.get("dbname") or [""])[0]
        secrets = {dsn}
        for password in [parts.password or "", *query.get("password", [])]:
            if password:
                secrets.update({password, unquote(password)})
        address = f"{host}:{port}" + (f"/{database}" if database else "")
        return cls(address, tuple(sorted(secrets, key=len, reverse=True)))

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def reason(self, exc: BaseException) -> str:
        detail = self.scrub(str(exc)).strip()
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError is one too
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and "connection was closed"
    asyncpg.AdminShutdownError,  # 57P01: pg_terminate_backend, smart shutdown
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.CannotConnectNowError,  # 57P03: starting up, in recovery
    asyncpg.TooManyConnectionsError,  # 53300: transient when others release
    # The protocol lost track of its state after the server hung up on it mid-exchange
    # ("cannot switch to state ..."): that connection is done, a new one is fine.
    asyncpg.InternalClientError,
)


def is_connection_error(exc: BaseException) -> bool:
    """Did this fail because the connection (not the statement) failed?

    Those are the errors a retry on a new connection can fix; anything else (a constraint,
    a syntax error, a bug) would fail again and is raised as it is.
    """
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    # asyncpg raises a bare InterfaceError for a connection it already knows is closed.
    message = str(exc)
    return isinstance(exc, asyncpg.InterfaceError) and (
        "connection is closed" in message or "connection was closed" in message
    )


@attrs.define
class _Phase:
    """How far one unit of work got before it failed: decides whether a retry is safe."""

    fn_started: bool = False
    commit_sent: bool = False


# -- the bridge ---------------------------------------------------------------------------
@attrs.define(eq=False)
class Database:
    """The trio-asyncio loop and an asyncpg pool, shared by the event store and projections.

    Open it with `open_database` (or get ``store.database``). Every method is Trio-async
    and may be called from any Trio task of the run, including tasks that are not
    children of the task that opened the loop (Hypercorn request handlers).

    A connection lost under a unit of work is retried on a fresh connection, within
    ``retry_for`` seconds, only when that is known to be safe (see `run`,
    `transaction`); otherwise, and once the budget is spent, `StoreUnavailable` is raised.
    The pool replaces dead connections, so the next call works once the server is back.
    """

    loop: Any  # trio_asyncio.TrioEventLoop, untyped
    target: _Target
    retry_for: float
    _pool: Any = attrs.field(repr=False)
    _connect_options: dict[str, Any] = attrs.field(repr=False)
    _closed: bool = False

    @property
    def address(self) -> str:
        """host:port/database, safe to log."""
        return self.target.address

    async def run(
        self,
        fn: Callable[[Connection, *Ts], Awaitable[T]],
        *args: *Ts,
        retry: bool = False,
    ) -> T:
        """``await fn(conn, *args)`` on one pooled connection, in one bridge crossing.

        ``fn`` is an *asyncio* coroutine function. Without a transaction each statement
        commits on its own, so after a connection lost midway nobody knows what ``fn``
        already did: it is retried only if ``retry=True`` says it is idempotent (reads).
        A connection that could not be obtained at all is always retried.
        """
        return await self._with_retries(fn, args, in_transaction=False, retry=retry)

    async def transaction(
        self,
        fn: Callable[[Connection, *Ts], Awaitable[T]],
        *args: *Ts,
        retry: bool = True,
    ) -> T:
        """Like `run`, inside one transaction (committed when ``fn`` returns).

        A connection lost before COMMIT was sent rolls the transaction back on the server,
        so by default the whole ``fn`` is run again on a new connection: it must touch
        only the database. Lost *during* COMMIT, the outcome is unknown and
        `StoreUnavailable` says so (a projection whose checkpoint is in the same
        transaction simply re-reads its checkpoint).
        """
        return await self._with_retries(fn, args, in_transaction=True, retry=retry)

    async def fetch(self, query: str, *args: Any, retry: bool = False) -> list[Record]:
        return await self.run(_fetch, query, args, retry=retry)

    async def fetchrow(self, query: str, *args: Any, retry: bool = False) -> Record | None:
        return await self.run(_fetchrow, query, args, retry=retry)

    async def fetchval(self, query: str, *args: Any, retry: bool = False) -> Any:
        return await self.run(_fetchval, query, args, retry=retry)

    async def execute(self, query: str, *args: Any, retry: bool = False) -> str:
        return await self.run(_execute, query, args, retry=retry)

    @asynccontextmanager
    async def listen(
        self, channel: str, *, buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Notification]]:
        """LISTEN on ``channel`` on a dedicated connection, for as long as the block runs.

        Notifications arrive in the yielded channel. The connection is re-established with
        backoff when it drops; each (re)connection, and an overflow of ``buffer``, delivers
        a ``resync`` item, since notifications in between are lost.
        """
        send, receive = trio.open_memory_channel[Notification](buffer)
        owed_resync = False

        def deliver(item: Notification) -> None:
            nonlocal owed_resync
            try:
                if owed_resync:
                    send.send_nowait(Notification(channel, "", resync=True))
                    owed_resync = False
                send.send_nowait(item)
            except trio.WouldBlock:
                owed_resync = True
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

        listener = _Listener(
            self,
            channel,
            on_notify=lambda payload: deliver(Notification(channel, payload)),
            on_state=lambda connected: (
                deliver(Notification(channel, "", resync=True)) if connected else None
            ),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            try:
                async with receive:
                    yield receive
            finally:
                nursery.cancel_scope.cancel()
                send.close()

    # -- internals ------------------------------------------------------------------------
    async def cross(self, fn: Callable[[*Ts], Coroutine[Any, Any, T]], *args: *Ts) -> T:
        """Run the asyncio coroutine function ``fn(*args)`` on the loop: one crossing."""
        if self._closed:
            raise StoreUnavailable(f"the connection pool for {self.address} is closed")
        return cast(T, await self.loop.run_aio_coroutine(fn(*args)))

    async def _with_retries(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        *,
        in_transaction: bool,
        retry: bool,
    ) -> T:
        deadline = trio.current_time() + self.retry_for
        delay = _FIRST_BACKOFF
        while True:
            phase = _Phase()
            try:
                return await self.cross(
                    _on_pooled_connection, self._pool, fn, args, phase, in_transaction
                )
            except asyncpg.InvalidCachedStatementError:
                # Another process changed the schema under a cached statement; asyncpg
                # re-prepares by itself outside a transaction. Inside one, nothing was
                # committed and the cache is now cleared: run it again, once more.
                if not (in_transaction and retry) or phase.commit_sent:
                    raise
                if trio.current_time() > deadline:
                    raise
                continue
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if phase.commit_sent:
                    raise StoreUnavailable(
                        f"lost the connection to PostgreSQL at {self.address} during COMMIT;"
                        " the transaction may or may not have committed"
                        f" ({self.target.reason(exc)})"
                    ) from exc
                if phase.fn_started and not retry:
                    raise StoreUnavailable(
                        f"lost the connection to PostgreSQL at {self.address} "
                        f"({self.target.reason(exc)})"
                    ) from exc
                if trio.current_time() + delay > deadline:
                    raise StoreUnavailable(
                        f"PostgreSQL at {self.address} unreachable for {self.retry_for:g} s "
                        f"({self.target.reason(exc)})"
                    ) from exc
                LOG.warning(
                    "PostgreSQL at %s: %s; retrying on a new connection",
                    self.address,
                    self.target.reason(exc),
                )
            await trio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _connect_listener(
        self,
        channel: str,
        on_notify: Callable[[str], None],
        on_lost: Callable[[], None],
    ) -> Any:
        """A new (not pooled) connection LISTENing on ``channel``; returns it."""
        scrub = self.target.reason

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                on_notify(payload)
            except Exception as exc:  # a raising callback would tear the loop down
                LOG.error("notification handler for %r failed: %s", channel, scrub(exc))

        def terminated(_conn: Any) -> None:
            try:
                on_lost()
            except Exception as exc:
                LOG.error("listener termination handler failed: %s", scrub(exc))

        async def connect() -> Any:
            conn = await asyncpg.connect(**self._connect_options)
            try:
                await conn.add_listener(channel, notified)
                conn.add_termination_listener(terminated)
            except BaseException:
                conn.terminate()
                raise
            return conn

        return await self.cross(connect)

    async def _close_connection(self, conn: Any) -> None:
        async def close() -> None:
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()

        if self._closed or conn.is_closed():
            return
        with trio.CancelScope(shield=True), trio.move_on_after(3):
            await self.cross(close)

    async def _close(self) -> None:
        async def close(pool: Any) -> None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except Exception:
                pool.terminate()

        with trio.CancelScope(shield=True):
            await self.cross(close, self._pool)
        self._closed = True


async def _on_pooled_connection(
    pool: Any,
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    phase: _Phase,
    in_transaction: bool,
) -> T:
    async with pool.acquire() as conn:
        phase.fn_started = True
        if not in_transaction:
            return await fn(conn, *args)
        async with conn.transaction():
            result = await fn(conn, *args)
            phase.commit_sent = True  # the block's exit sends COMMIT
        return result


async def _fetch(conn: Connection, query: str, args: tuple[Any, ...]) -> list[Record]:
    return await conn.fetch(query, *args)


async def _fetchrow(conn: Connection, query: str, args: tuple[Any, ...]) -> Record | None:
    return await conn.fetchrow(query, *args)


async def _fetchval(conn: Connection, query: str, args: tuple[Any, ...]) -> Any:
    return await conn.fetchval(query, *args)


async def _execute(conn: Connection, query: str, args: tuple[Any, ...]) -> str:
    return await conn.execute(query, *args)


@asynccontextmanager
async def _plain_startup_errors(opening: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Raise a failure to open as itself, not wrapped in the loop's nursery groups.

    "Cannot connect to PostgreSQL at host:port" must reach the operator as one line.
    Errors from the caller's own block are left as Trio delivers them.
    """
    opened = False
    try:
        async with opening as value:
            opened = True
            yield value
    except BaseExceptionGroup as group:
        sole: BaseException = group
        while isinstance(sole, BaseExceptionGroup) and len(sole.exceptions) == 1:
            sole = sole.exceptions[0]
        if opened or not isinstance(sole, Exception) or isinstance(sole, BaseExceptionGroup):
            raise
        raise sole from None


def open_database(
    dsn: str,
    *,
    schema: str | None = None,
    pool_size: int = 10,
    application_name: str = "aftercall",
    connect_timeout: float = 5.0,
    startup_retry_for: float = 3.0,
    retry_for: float = 10.0,
) -> AbstractAsyncContextManager[Database]:
    """Open the trio-asyncio loop and a pool; close both when the block ends.

    ``schema`` is the whole ``search_path`` of every connection, so a schema is a private
    database (tests use one each); the event store's migrations create it. A server that
    does not answer within ``startup_retry_for`` seconds raises `StoreUnavailable`
    naming host:port, never the password.

    Own it from one long-lived task (under Hypercorn: a task started from
    ``before_serving`` with ``await app.nursery.start(...)``), never from a
    ``while_serving`` generator; use it from any task.
    """
    return _plain_startup_errors(
        _open_database(
            dsn,
            schema=schema,
            pool_size=pool_size,
            application_name=application_name,
            connect_timeout=connect_timeout,
            startup_retry_for=startup_retry_for,
            retry_for=retry_for,
        )
    )


@asynccontextmanager
async def _open_database(
    dsn: str,
    *,
    schema: str | None = None,
    pool_size: int = 10,
    application_name: str = "aftercall",
    connect_timeout: float = 5.0,
    startup_retry_for: float = 3.0,
    retry_for: float = 10.0,
) -> AsyncIterator[Database]:
    target = _Target.parse(dsn)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema {schema!r} must match {_SCHEMA_NAME.pattern}")
    server_settings = {"application_name": application_name, "synchronous_commit": "on"}
    if schema is not None:
        server_settings["search_path"] = f'"{schema}"'
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_exception_logger(target))
        options: dict[str, Any] = {
            "dsn": dsn,
            "server_settings": server_settings,
            "timeout": connect_timeout,
            "loop": loop,
        }
        pool = await _create_pool(loop, target, options, pool_size, startup_retry_for)
        database = Database(loop, target, retry_for, pool, options)
        try:
            yield database
        finally:
            await database._close()


async def _keep_session(_conn: Any) -> None:
    """The pool's reset on release: nothing to do (asyncpg still rolls back an open
    transaction itself).

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    on every release: a second round trip for every read (about 1 ms of CPU through the
    bridge, measured), for session state this module never leaves behind. The rule that
    makes it safe: work on a pooled connection uses transaction-level locks only, no
    ``SET`` (``SET LOCAL`` in a transaction), no ``LISTEN`` (the listener has its own
    connection), no cursors outside a transaction.
    """


async def _create_pool(
    loop: Any, target: _Target, options: dict[str, Any], size: int, retry_for: float
) -> Any:
    async def create() -> Any:
        # min_size=1: one connection proves the server answers; the rest open on demand.
        pool = asyncpg.create_pool(min_size=1, max_size=size, reset=_keep_session, **options)
        try:
            await pool
        except BaseException:
            pool.terminate()
            raise
        return pool

    deadline = trio.current_time() + retry_for
    delay = _FIRST_BACKOFF * 2
    while True:
        try:
            return await loop.run_aio_coroutine(create())
        except Exception as exc:
            transient = is_connection_error(exc)
            if not transient or trio.current_time() + delay > deadline:
                message = f"cannot connect to PostgreSQL at {target.address}: {target.reason(exc)}"
                raise StoreUnavailable(message) from None
            LOG.info("PostgreSQL at %s not answering yet: %s", target.address, target.reason(exc))
        await trio.sleep(delay)
        delay = min(delay * 2, _MAX_BACKOFF)


def _exception_logger(target: _Target) -> Callable[[Any, dict[str, Any]], None]:
    """An asyncio exception handler that logs (trio-asyncio's default re-raises)."""

    def handle(_loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = target.scrub(str(context.get("message") or "asyncio error"))
        if exc is None:
            LOG.warning("asyncio (PostgreSQL bridge): %s", message)
        else:
            LOG.warning("asyncio (PostgreSQL bridge): %s: %s", message, target.reason(exc))

    return handle


# -- LISTEN with reconnection --------------------------------------------------------------
@attrs.define(eq=False)
class _Listener:
    """Keeps one LISTEN connection up; tells its owner about notifications and its state.

    ``on_state(True)`` runs after each successful LISTEN and ``on_state(False)`` when the
    connection is lost: in between, notifications may have been missed.
    """

    database: Database
    channel: str
    on_notify: Callable[[str], None]
    on_state: Callable[[bool], None]
    #: A liveness query this often: a half-open TCP connection never reports itself.
    ping_interval: float = 30.0
    connected: bool = False
    generation: int = 0  # successful LISTENs so far
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def wait_connected(self, generation: int) -> None:
        """Return once LISTEN is active for the ``generation``-th time (or later)."""
        while not (self.connected and self.generation >= generation):
            await self._changed.wait()

    def _set_state(self, connected: bool) -> None:
        self.connected = connected
        if connected:
            self.generation += 1
        self._changed.set()
        self._changed = trio.Event()
        self.on_state(connected)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        delay = _FIRST_BACKOFF
        started = False
        while True:
            lost = trio.Event()
            try:
                conn = await self.database._connect_listener(self.channel, self.on_notify, lost.set)
            except Exception as exc:
                LOG.warning(
                    "LISTEN %s at %s failed (%s); retrying in %.2f s",
                    self.channel,
                    self.database.address,
                    self.database.target.reason(exc),
                    delay,
                )
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF * 5)
                continue
            delay = _FIRST_BACKOFF
            try:
                self._set_state(True)
                if not started:
                    task_status.started()
                    started = True
                await self._watch(conn, lost)
            finally:
                if self.connected:
                    self._set_state(False)
                await self.database._close_connection(conn)
            LOG.warning("LISTEN %s at %s lost; reconnecting", self.channel, self.database.address)

    async def _watch(self, conn: Any, lost: trio.Event) -> None:
        async def ping() -> None:
            await conn.fetchval("SELECT 1", timeout=5)

        while not lost.is_set():
            with trio.move_on_after(self.ping_interval):
                await lost.wait()
                return
            try:
                await self.database.cross(ping)
            except Exception:
                return


# -- the event store ----------------------------------------------------------------------
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
            conn = await asyncpg.connect(**self.database._connect_options)
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
    _listener: _Listener = attrs.field(init=False)
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
        self._listener = _Listener(
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
            except asyncpg.InvalidCachedStatementError:
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
    *,
    schema: str | None = None,
    pool_size: int = 10,
    application_name: str = "aftercall",
    connect_timeout: float = 5.0,
    startup_retry_for: float = 3.0,
    retry_for: float = 10.0,
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
    return _plain_startup_errors(
        _open_postgres_store(
            dsn,
            schema=schema,
            pool_size=pool_size,
            application_name=application_name,
            connect_timeout=connect_timeout,
            startup_retry_for=startup_retry_for,
            retry_for=retry_for,
            fallback_interval=fallback_interval,
            max_batch=max_batch,
            writers=writers,
        )
    )


@asynccontextmanager
async def _open_postgres_store(
    dsn: str,
    *,
    schema: str | None = None,
    pool_size: int = 10,
    application_name: str = "aftercall",
    connect_timeout: float = 5.0,
    startup_retry_for: float = 3.0,
    retry_for: float = 10.0,
    fallback_interval: float = 1.0,
    max_batch: int = 500,
    writers: int = 1,
) -> AsyncIterator[PostgresEventStore]:
    async with open_database(
        dsn,
        schema=schema,
        pool_size=pool_size,
        application_name=application_name,
        connect_timeout=connect_timeout,
        startup_retry_for=startup_retry_for,
        retry_for=retry_for,
    ) as database:
        current_schema, key = await database.run(_migrate, schema, POSTGRES_MIGRATIONS, retry=True)
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
