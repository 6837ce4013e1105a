"""The one bridge between Trio and asyncpg: the loop, the pool, retries, LISTEN.

asyncpg is asyncio-only; aftercall is Trio. Every database call crosses trio-asyncio, and
this module is the only place allowed to import asyncpg or trio_asyncio (a check enforces
it), so the traps measured in docs/stack.md are handled once:

- The loop is always passed explicitly (``loop.run_aio_coroutine``). Hypercorn request
  handlers are not children of the task that opened the loop, so trio-asyncio's context
  variable is ``None`` there; nothing here relies on it.
- A crossing costs ~0.4 ms of CPU, so a unit of work is one asyncio coroutine run on one
  connection in one crossing (`Database.run`, `Database.transaction`), and appends are
  group-committed: one crossing and one transaction per batch of whatever is waiting.
- trio-asyncio's default exception handler turns any stray asyncio error into a crash of
  the loop's nursery (and the pool with it); ours logs instead.

The event store built on it is ``events.postgres``; the projections' read models use the same
`Database` (``store.database``).
"""

from __future__ import annotations

import asyncio
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
from typing import Any, Final, Protocol, TypeVar, TypeVarTuple, cast
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import attrs
import trio
import trio_asyncio

from events.store import (
    StoreUnavailable,
)

LOG = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: First pause before retrying after a lost connection; doubles up to `_MAX_BACKOFF`.
_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")


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


#: A prepared statement that a schema change by another process made stale: the call failed
#: and wrote nothing, so running it again is safe.
InvalidCachedStatement: Final = asyncpg.InvalidCachedStatementError


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

        listener = Listener(
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

    async def connect_outside_pool(self) -> Any:  # asyncio side: call it inside `cross`
        """A new connection with the pool's settings, owned by the caller (the event
        store's writer holds one across batches)."""
        return await asyncpg.connect(**self._connect_options)

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
async def plain_startup_errors(opening: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
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


@attrs.frozen(kw_only=True)
class PostgresOptions:
    """How to connect, in one place: every opener takes one of these.

    Attributes:
        schema: the whole ``search_path`` of every connection, so a schema is a private
            database (tests use one each); the event store's migrations create it.
        pool_size: pooled connections (the event store adds its writer's and listener's).
        application_name: shown in ``pg_stat_activity``.
        connect_timeout: seconds for one connection attempt.
        startup_retry_for: how long opening retries a server that does not answer.
        retry_for: how long a unit of work retries a lost connection. Longer than a
            webhook may wait (``web.context.APPEND_BUDGET``, 12 s), so that an append
            queued at the start of an outage still lands when the server is back within
            the webhook's own budget (at 10 s, the first webhook of a 10 s outage was
            refused just before the server came back: ``benchmarks/outage.py``).
    """

    schema: str | None = attrs.field(default=None)
    pool_size: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    application_name: str = "aftercall"
    connect_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    startup_retry_for: float = attrs.field(default=3.0, validator=attrs.validators.ge(0))
    retry_for: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))

    @schema.validator
    def _schema_name(self, _: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None and not _SCHEMA_NAME.match(value):
            raise ValueError(f"schema {value!r} must match {_SCHEMA_NAME.pattern}")


def open_database(
    dsn: str, options: PostgresOptions | None = None
) -> AbstractAsyncContextManager[Database]:
    """Open the trio-asyncio loop and a pool; close both when the block ends.

    A server that does not answer within ``options.startup_retry_for`` seconds raises
    `StoreUnavailable` naming host:port, never the password.

    Own it from one long-lived task (under Hypercorn: a task started from
    ``before_serving`` with ``await app.nursery.start(...)``), never from a
    ``while_serving`` generator; use it from any task.
    """
    return plain_startup_errors(_open_database(dsn, options or PostgresOptions()))


@asynccontextmanager
async def _open_database(dsn: str, options: PostgresOptions) -> AsyncIterator[Database]:
    target = _Target.parse(dsn)
    schema, application_name = options.schema, options.application_name
    server_settings = {"application_name": application_name, "synchronous_commit": "on"}
    if schema is not None:
        server_settings["search_path"] = f'"{schema}"'
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_exception_logger(target))
        connect: dict[str, Any] = {
            "dsn": dsn,
            "server_settings": server_settings,
            "timeout": options.connect_timeout,
            "loop": loop,
        }
        pool = await _create_pool(
            loop, target, connect, options.pool_size, options.startup_retry_for
        )
        database = Database(loop, target, options.retry_for, pool, connect)
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
class Listener:
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
