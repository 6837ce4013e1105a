"""Versioned schema migrations for both backends.

Each migration is applied once, in order, inside one transaction together with its row in
``schema_migrations``. The caller holds a lock that makes two processes starting at the same
moment take turns (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory transaction lock),
so the second one finds the work done. A migration is never edited once released: changes
are new migrations.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "event log",
        (
            """
            CREATE TABLE events (
                position    INTEGER PRIMARY KEY AUTOINCREMENT,
                stream      TEXT    NOT NULL,
                category    TEXT    NOT NULL,
                version     INTEGER NOT NULL,
                type        TEXT    NOT NULL,
                data        TEXT    NOT NULL,
                metadata    TEXT    NOT NULL,
                event_id    TEXT    NOT NULL UNIQUE,
                recorded_at TEXT    NOT NULL,
                UNIQUE (stream, version)
            )
            """,
            "CREATE INDEX events_category_position ON events (category, position)",
        ),
    ),
)


POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "event log",
        (
            # position comes from an identity sequence, taken by the writer while it holds
            # the log's advisory lock (events.postgres): that is what makes the order safe.
            """
            CREATE TABLE events (
                position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                stream      text        NOT NULL,
                category    text        NOT NULL,
                version     integer     NOT NULL CHECK (version > 0),
                type        text        NOT NULL,
                data        jsonb       NOT NULL,
                metadata    jsonb       NOT NULL,
                event_id    uuid        NOT NULL UNIQUE,
                recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                UNIQUE (stream, version)
            )
            """,
            "CREATE INDEX events_category_position ON events (category, position)",
        ),
    ),
)
