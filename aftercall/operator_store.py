"""Where operators' password hashes and sessions are kept: beside the log, never in it.

Two tables in the database of the event log (so a deployment has one thing to back up and
every worker sees the same accounts): ``operator_credentials`` (name, argon2 hash, wrong
passwords in a row, lock) and ``operator_sessions`` (SHA-256 of the token, CSRF token,
expiry). Each method of ``web.console.accounts.CredentialStore`` is one atomic statement or
transaction, so several workers agree on failure counts and locks.

The backend is picked by the store's type, as ``aftercall.storage`` picks read models: the
composition root is the one place that asks which store it has.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import trio

from events.postgres import PostgresEventStore
from events.postgres_bridge import Connection, Database, Record
from events.sqlite import SQLiteEventStore
from events.store import EventStore, StoreUnavailable
from web.console.accounts import Credential, CredentialStore, SessionRecord

T = TypeVar("T")

#: Advisory lock for creating the tables: two workers starting at once would otherwise
#: race ``CREATE TABLE IF NOT EXISTS`` into a unique violation in the catalogue. "aftm" as
#: the migrations use, second key 2 (the event log's migrations take 0).
_LOCK: Final = (0x6166746D, 2)

_CREDENTIAL_COLUMNS: Final = (
    "name, password_hash, added_at, failures, last_failure_at, locked_until"
)
_SESSION_COLUMNS: Final = "token_hash, session_id, name, csrf_token, created_at, expires_at"

_POSTGRES_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS operator_credentials (
        name text PRIMARY KEY,
        password_hash text NOT NULL,
        added_at timestamptz NOT NULL,
        failures integer NOT NULL DEFAULT 0,
        last_failure_at timestamptz,
        locked_until timestamptz)""",
    """CREATE TABLE IF NOT EXISTS operator_sessions (
        token_hash text PRIMARY KEY,
        session_id text NOT NULL,
        name text NOT NULL REFERENCES operator_credentials (name) ON DELETE CASCADE,
        csrf_token text NOT NULL,
        created_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS operator_sessions_name_idx ON operator_sessions (name)",
    "CREATE INDEX IF NOT EXISTS operator_sessions_expires_idx ON operator_sessions (expires_at)",
)

# SQLite keeps times as ISO 8601 text in UTC with microseconds (as the read models do), so
# text comparison is time comparison.
_SQLITE_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS operator_credentials (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        added_at TEXT NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        last_failure_at TEXT,
        locked_until TEXT)""",
    """CREATE TABLE IF NOT EXISTS operator_sessions (
        token_hash TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        name TEXT NOT NULL REFERENCES operator_credentials (name) ON DELETE CASCADE,
        csrf_token TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS operator_sessions_name_idx ON operator_sessions (name)",
    "CREATE INDEX IF NOT EXISTS operator_sessions_expires_idx ON operator_sessions (expires_at)",
)


def open_operator_store(store: EventStore) -> AbstractAsyncContextManager[CredentialStore]:
    """The credentials tables in the database of ``store`` (created when missing)."""
    if isinstance(store, PostgresEventStore):
        return _postgres(store.database)
    if isinstance(store, SQLiteEventStore):
        return _sqlite(store.path)
    raise TypeError(f"no operator store for an event store of type {type(store).__name__}")


# -- PostgreSQL ---------------------------------------------------------------------------
@asynccontextmanager
async def _postgres(database: Database) -> AsyncIterator[CredentialStore]:
    await database.transaction(_create_postgres_tables)
    yield PostgresCredentials(database)


async def _create_postgres_tables(conn: Connection) -> None:
    await conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK[0]}, {_LOCK[1]})")
    for statement in _POSTGRES_SCHEMA:
        await conn.execute(statement)


def _credential(row: Record | tuple[Any, ...]) -> Credential:
    name, password_hash, added_at, failures, last_failure_at, locked_until = _values(row, 6)
    return Credential(
        name=name,
        password_hash=password_hash,
        added_at=_time(added_at),
        failures=int(failures),
        last_failure_at=_time_or_none(last_failure_at),
        locked_until=_time_or_none(locked_until),
    )


def _session_record(row: Record | tuple[Any, ...]) -> SessionRecord:
    token_hash, session_id, name, csrf_token, created_at, expires_at = _values(row, 6)
    return SessionRecord(
        token_hash=token_hash,
        session_id=session_id,
        name=name,
        csrf_token=csrf_token,
        created_at=_time(created_at),
        expires_at=_time(expires_at),
    )


@attrs.frozen
class PostgresCredentials:
    database: Database

    async def credential(self, name: str) -> Credential | None:
        row = await self.database.fetchrow(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM operator_credentials WHERE name = $1",
            name,
            retry=True,
        )
        return None if row is None else _credential(row)

    async def credentials(self) -> list[Credential]:
        rows = await self.database.fetch(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM operator_credentials ORDER BY name", retry=True
        )
        return [_credential(row) for row in rows]

    async def add(self, name: str, password_hash: str, at: datetime) -> bool:
        status = await self.database.execute(
            "INSERT INTO operator_credentials (name, password_hash, added_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO NOTHING",
            name,
            password_hash,
            at,
        )
        return status.endswith(" 1")

    async def set_password(self, name: str, password_hash: str) -> int | None:
        row = await self.database.fetchrow(
            "WITH changed AS (UPDATE operator_credentials SET password_hash = $2, failures = 0,"
            " last_failure_at = NULL, locked_until = NULL WHERE name = $1 RETURNING name),"
            " ended AS (DELETE FROM operator_sessions WHERE name IN (SELECT name FROM changed)"
            " RETURNING 1)"
            " SELECT (SELECT count(*) FROM changed), (SELECT count(*) FROM ended)",
            name,
            password_hash,
        )
        assert row is not None
        return int(row[1]) if row[0] else None

    async def remove(self, name: str) -> int | None:
        row = await self.database.fetchrow(
            "WITH ended AS (DELETE FROM operator_sessions WHERE name = $1 RETURNING 1),"
            " gone AS (DELETE FROM operator_credentials WHERE name = $1 RETURNING 1)"
            " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM ended)",
            name,
        )
        assert row is not None
        return int(row[1]) if row[0] else None

    async def note_failure(
        self, name: str, at: datetime, lock_after: int, locked_until: datetime
    ) -> Credential | None:
        row = await self.database.fetchrow(
            "UPDATE operator_credentials SET failures = failures + 1, last_failure_at = $2,"
            " locked_until = CASE WHEN failures + 1 >= $3 THEN $4 ELSE locked_until END"
            f" WHERE name = $1 RETURNING {_CREDENTIAL_COLUMNS}",
            name,
            at,
            lock_after,
            locked_until,
        )
        return None if row is None else _credential(row)

    async def note_success(self, name: str) -> None:
        await self.database.execute(
            "UPDATE operator_credentials SET failures = 0, last_failure_at = NULL,"
            " locked_until = NULL WHERE name = $1 AND failures > 0",
            name,
            retry=True,  # the same outcome however often it runs
        )

    async def add_session(self, session: SessionRecord) -> None:
        await self.database.execute(
            f"INSERT INTO operator_sessions ({_SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
            *_session_values(session),
        )

    async def session(self, token_hash: str, now: datetime) -> SessionRecord | None:
        row = await self.database.fetchrow(
            f"SELECT {_SESSION_COLUMNS} FROM operator_sessions"
            " WHERE token_hash = $1 AND expires_at > $2",
            token_hash,
            now,
            retry=True,
        )
        return None if row is None else _session_record(row)

    async def end_session(self, token_hash: str) -> SessionRecord | None:
        row = await self.database.fetchrow(
            f"DELETE FROM operator_sessions WHERE token_hash = $1 RETURNING {_SESSION_COLUMNS}",
            token_hash,
        )
        return None if row is None else _session_record(row)

    async def end_expired_sessions(self, now: datetime) -> int:
        status = await self.database.execute(
            "DELETE FROM operator_sessions WHERE expires_at <= $1", now, retry=True
        )
        return int(status.rsplit(" ", 1)[-1])


# -- SQLite -------------------------------------------------------------------------------
@asynccontextmanager
async def _sqlite(path: Path) -> AsyncIterator[CredentialStore]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SQLITE_SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return conn

    try:
        conn = await trio.to_thread.run_sync(connect)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open the operator accounts in {path}: {exc}") from exc
    try:
        yield SQLiteCredentials(conn)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(conn.close)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@attrs.define(eq=False)
class SQLiteCredentials:
    conn: sqlite3.Connection
    _limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def guarded(conn: sqlite3.Connection) -> T:
            try:
                return fn(conn)
            except sqlite3.OperationalError as exc:  # locked past the timeout, disk gone
                raise StoreUnavailable(f"operator accounts: {exc}") from exc

        return await trio.to_thread.run_sync(guarded, self.conn, limiter=self._limiter)

    async def credential(self, name: str) -> Credential | None:
        def query(conn: sqlite3.Connection) -> Credential | None:
            row = conn.execute(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM operator_credentials WHERE name = ?", (name,)
            ).fetchone()
            return None if row is None else _credential(row)

        return await self._run(query)

    async def credentials(self) -> list[Credential]:
        def query(conn: sqlite3.Connection) -> list[Credential]:
            rows = conn.execute(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM operator_credentials ORDER BY name"
            ).fetchall()
            return [_credential(row) for row in rows]

        return await self._run(query)

    async def add(self, name: str, password_hash: str, at: datetime) -> bool:
        def insert(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO operator_credentials (name, password_hash, added_at)"
                " VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, password_hash, _iso(at)),
            )
            return cursor.rowcount == 1

        return await self._run(insert)

    async def set_password(self, name: str, password_hash: str) -> int | None:
        def change(conn: sqlite3.Connection) -> int | None:
            return _in_transaction(
                conn,
                lambda: (
                    None
                    if conn.execute(
                        "UPDATE operator_credentials SET password_hash = ?, failures = 0,"
                        " last_failure_at = NULL, locked_until = NULL WHERE name = ?",
                        (password_hash, name),
                    ).rowcount
                    == 0
                    else conn.execute(
                        "DELETE FROM operator_sessions WHERE name = ?", (name,)
                    ).rowcount
                ),
            )

        return await self._run(change)

    async def remove(self, name: str) -> int | None:
        def delete(conn: sqlite3.Connection) -> int | None:
            def both() -> int | None:
                ended = conn.execute("DELETE FROM operator_sessions WHERE name = ?", (name,))
                gone = conn.execute("DELETE FROM operator_credentials WHERE name = ?", (name,))
                return ended.rowcount if gone.rowcount else None

            return _in_transaction(conn, both)

        return await self._run(delete)

    async def note_failure(
        self, name: str, at: datetime, lock_after: int, locked_until: datetime
    ) -> Credential | None:
        def update(conn: sqlite3.Connection) -> Credential | None:
            row = conn.execute(
                "UPDATE operator_credentials SET failures = failures + 1, last_failure_at = ?,"
                " locked_until = CASE WHEN failures + 1 >= ? THEN ? ELSE locked_until END"
                f" WHERE name = ? RETURNING {_CREDENTIAL_COLUMNS}",
                (_iso(at), lock_after, _iso(locked_until), name),
            ).fetchone()
            return None if row is None else _credential(row)

        return await self._run(update)

    async def note_success(self, name: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "UPDATE operator_credentials SET failures = 0, last_failure_at = NULL,"
                " locked_until = NULL WHERE name = ? AND failures > 0",
                (name,),
            )
        )

    async def add_session(self, session: SessionRecord) -> None:
        values = _session_values(session)
        await self._run(
            lambda conn: conn.execute(
                f"INSERT INTO operator_sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (*values[:4], _iso(values[4]), _iso(values[5])),
            )
        )

    async def session(self, token_hash: str, now: datetime) -> SessionRecord | None:
        def query(conn: sqlite3.Connection) -> SessionRecord | None:
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM operator_sessions"
                " WHERE token_hash = ? AND expires_at > ?",
                (token_hash, _iso(now)),
            ).fetchone()
            return None if row is None else _session_record(row)

        return await self._run(query)

    async def end_session(self, token_hash: str) -> SessionRecord | None:
        def delete(conn: sqlite3.Connection) -> SessionRecord | None:
            row = conn.execute(
                f"DELETE FROM operator_sessions WHERE token_hash = ? RETURNING {_SESSION_COLUMNS}",
                (token_hash,),
            ).fetchone()
            return None if row is None else _session_record(row)

        return await self._run(delete)

    async def end_expired_sessions(self, now: datetime) -> int:
        return await self._run(
            lambda conn: (
                conn.execute(
                    "DELETE FROM operator_sessions WHERE expires_at <= ?", (_iso(now),)
                ).rowcount
            )
        )


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _session_values(session: SessionRecord) -> tuple[str, str, str, str, datetime, datetime]:
    return (
        session.token_hash,
        session.session_id,
        session.name,
        session.csrf_token,
        session.created_at,
        session.expires_at,
    )


def _values(row: Record | tuple[Any, ...], count: int) -> list[Any]:
    """A row's columns by position: an asyncpg record and a sqlite3 tuple alike."""
    return [row[index] for index in range(count)]


def _time(value: Any) -> datetime:
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(parsed, datetime)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _time_or_none(value: Any) -> datetime | None:
    return None if value is None else _time(value)
