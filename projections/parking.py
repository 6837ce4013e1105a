"""Events a projection could not apply: when to give up on one, and what is kept of it.

A read model folds the log in order, so one event that cannot be applied (a value its
table cannot hold, a rule that breaks on an odd payload) would stop it for good: the
runner would retry the same page forever while the log grows and the read model goes
stale. Instead, after `PARK_AFTER_TRIES` failed tries of that one event, the runner
*parks* it: a row in ``projection_parked_events`` (in the read models' own database, so
it is written in the transaction that moves the checkpoint past the event) says which
projection, which event and why, and the projection goes on with the next one. ``aftercall
projections status`` lists them, ``/readyz`` reports them ("degraded"), and ``aftercall
projections retry`` applies them again once their cause is fixed.

Only a failure that the event itself may cause parks it. When the store is away (the
connection lost, the server shutting down, a lock or a deadlock, the disk full) every event
would fail alike: those are retried as long as it takes, and never park anything
(`is_transient`).

A failed page may hold thousands of events; which one failed? The runner halves the page
until the failing window is a single event (`next_move`), so an event is only ever blamed
alone, and the tries and the backoff count only for that one event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Final, Literal

import attrs

from events.store import StoreUnavailable

#: Failed tries of one event (alone in its window) before it is parked. The pauses between
#: them double from the runner's first retry (0.1 s, 0.2 s, 0.4 s, 0.8 s: parked 1.5 s
#: after the first failure): long enough for a passing failure that `is_transient` cannot
#: tell from the event's own (an error it does not know) to pass, short enough that a
#: broken event costs seconds, not a read model.
PARK_AFTER_TRIES: Final = 5
#: An error's text is kept, shown and logged up to this many characters.
MAX_ERROR_TEXT: Final = 500

#: SQLSTATE classes that say the server or the transaction failed, not the statement's
#: data: connection (08), transaction rolled back for another's sake (40: serialization,
#: deadlock), insufficient resources (53), operator intervention (57: shutdown, statement
#: cancelled), system error (58: I/O).
_TRANSIENT_SQLSTATE_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})
#: ... and single states of other classes: lock not available, object in use.
_TRANSIENT_SQLSTATES: Final = frozenset({"55P03", "55006"})
#: SQLite's result codes (``sqlite3.Error.sqlite_errorname``, extended codes included as
#: their prefix) of the same kind: another writer holds the file, I/O, disk full, memory.
_TRANSIENT_SQLITE_ERRORS: Final = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_NOMEM",
    "SQLITE_INTERRUPT",
    "SQLITE_PROTOCOL",
)
#: ``scheme://user:password@host`` in an error's text: the password never leaves.
_CREDENTIALS: Final = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")


@attrs.frozen
class ParkedEvent:
    """One event a projection could not apply, set aside (a row of the parked table).

    ``projection`` is the checkpoint's name: the projection's, or its rebuild's
    (``history_rebuild``) while a rebuild is in progress. ``event_id`` is None only when
    the event could not be read back from the log to ask it.
    """

    projection: str
    position: int
    stream: str
    event_id: str | None
    type: str
    error_type: str
    error_message: str
    attempts: int
    parked_at: datetime

    @property
    def error(self) -> str:
        return f"{self.error_type}: {self.error_message}" if self.error_message else self.error_type


@attrs.frozen
class ParkedSummary:
    """What one projection has parked: how many events, and the first of them."""

    projection: str
    count: int
    first: ParkedEvent

    def describe(self) -> str:
        """One line for people (``/readyz``, logs): no stream, so no phone number."""
        events = "1 parked event" if self.count == 1 else f"{self.count} parked events"
        first = self.first
        return (
            f"projection {self.projection}: {events}; the first, position {first.position}"
            f" ({first.type}), failed with {first.error}"
        )


def summarize(parked: Iterable[ParkedEvent]) -> list[ParkedSummary]:
    """Per projection (in the order first met), how many are parked and the earliest."""
    counts: dict[str, int] = {}
    firsts: dict[str, ParkedEvent] = {}
    for event in parked:
        counts[event.projection] = counts.get(event.projection, 0) + 1
        known = firsts.get(event.projection)
        if known is None or event.position < known.position:
            firsts[event.projection] = event
    return [ParkedSummary(name, count, firsts[name]) for name, count in counts.items()]


def is_transient(exc: BaseException) -> bool:
    """Did this fail because the store failed (retry it, whatever the event), rather than
    because of what was being written?

    Read from the error alone, whichever backend raised it: the store's own
    `StoreUnavailable`, an OS error, an SQLSTATE of a class that is about the server rather than
    the data, or an SQLite result code of that kind. A ``DataError`` (22...: a value out of
    range), a constraint (23...), a missing column (42...) or a bug in a rule is not.
    """
    if isinstance(exc, StoreUnavailable | OSError | MemoryError):
        return True
    # A connection lost, refused or broken by the protocol comes out of the PostgreSQL
    # bridge as StoreUnavailable (``Database.transaction`` retries it first); the client's
    # other errors carry no SQLSTATE and are about what was sent (a value asyncpg cannot
    # encode for its column: the incident's "value out of int64 range").
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES
    name = getattr(exc, "sqlite_errorname", None)
    return isinstance(name, str) and name.startswith(_TRANSIENT_SQLITE_ERRORS)


Move = Literal["retry", "narrow", "again", "park"]


def next_move(
    exc: BaseException, *, window: int, suspect: bool, tries: int, park_after: int
) -> Move:
    """What a projection does after a page failed with ``exc``.

    ``window`` is how many events of the log the failed page read (0: it failed before it
    had a page), ``suspect`` whether the page held an event this projection folds (a page
    of events it skips can only fail for reasons of its own, not an event's), ``tries``
    the failed tries of this one-event window so far, this one included.

    - ``retry``: as any failure: back off and try the same page again, as long as it takes
      (the store is away, or no event can be blamed);
    - ``narrow``: try the first half of the window next, at once, to find the event;
    - ``again``: the window is one event: back off and try it again;
    - ``park``: it failed ``park_after`` times alone: set it aside and go on.
    """
    if is_transient(exc) or window < 1 or not suspect:
        return "retry"
    if window > 1:
        return "narrow"
    return "park" if tries >= park_after else "again"


def error_type(exc: BaseException) -> str:
    return type(exc).__name__


def error_message(exc: BaseException) -> str:
    """An error's text on one line, bounded, with any URL's password masked (an error
    about a connection may carry the DSN it used)."""
    text = " ".join(str(exc).split())
    text = _CREDENTIALS.sub(r"\1***@", text)
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 1] + "…"
    return text


def error_text(exc: BaseException) -> str:
    message = error_message(exc)
    return f"{error_type(exc)}: {message}" if message else error_type(exc)
