"""Facts about the people who run aftercall: operator accounts and their sign-ins.

Each operator has a stream, ``operator-<name>``: when the account was added, its password
changed or the account removed, and every sign-in, refused sign-in, lock and sign-out. The
console's access is then as reviewable as any conversation (``aftercall events show
operator-ana``).

No password material is ever in these events: not the password, not its hash, not the
session token. The argon2 hash lives beside the log in the ``operator_credentials`` table
(``aftercall.operator_store``), which can be rotated or wiped; the log is immutable and is
read by many (``aftercall events``, the console's events page, backups), so a hash here
would be a hash everywhere forever. A sign-in names its session by a separate random id
(``session_id``), never by the token the cookie carries.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final, Literal

import attrs

from events.codec import event_type

#: Stream category of operator accounts.
OPERATOR_CATEGORY: Final = "operator"
#: Lower-case letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit: a
#: name that is a valid stream id, reads the same in every log line, and cannot be two
#: accounts differing only by case or by white space.
OPERATOR_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")

#: Who did it: the ``aftercall operators`` command, the sandbox's start-up, the console.
Actor = Literal["cli", "sandbox", "console", "test"]


class InvalidOperatorName(ValueError):
    """A name that cannot be an operator's (see `OPERATOR_NAME`)."""


def validate_operator_name(name: str) -> str:
    """The name unchanged if it can be an operator's; `InvalidOperatorName` naming why not."""
    if not isinstance(name, str) or not OPERATOR_NAME.fullmatch(name):
        shown = name[:40] if isinstance(name, str) else type(name).__name__
        raise InvalidOperatorName(
            f"operator name {shown!r} must be 1 to 63 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or a digit"
        )
    return name


def operator_stream(name: str) -> str:
    """``ana`` -> ``operator-ana``."""
    return f"{OPERATOR_CATEGORY}-{validate_operator_name(name)}"


@event_type
@attrs.frozen
class OperatorAdded:
    """An operator account was created (its password hash is stored outside the log)."""

    name: str
    added_at: datetime
    by: Actor = "cli"


@event_type
@attrs.frozen
class OperatorPasswordChanged:
    """The operator's password was replaced; every session of the account was ended."""

    name: str
    changed_at: datetime
    by: Actor = "cli"
    sessions_ended: int = 0


@event_type
@attrs.frozen
class OperatorRemoved:
    """The account is gone: it cannot sign in, and its open sessions were ended."""

    name: str
    removed_at: datetime
    by: Actor = "cli"
    sessions_ended: int = 0


@event_type
@attrs.frozen
class OperatorSignedIn:
    """A sign-in with the right password. ``session_id`` names the session in the log (the
    cookie's token is another value, known only to the browser and, hashed, the database)."""

    name: str
    session_id: str
    at: datetime
    expires_at: datetime
    client: str | None = None


@event_type
@attrs.frozen
class OperatorSignInRefused:
    """A wrong password. ``failures`` counts the wrong passwords in a row so far, and
    ``retry_after_seconds`` how long the next try must wait (None: it need not).

    Attempts refused without a check (too soon after a wrong one, or while the account is
    locked) are logged, not recorded: they cost an attacker nothing, and one event each
    would let anyone grow the log at will.
    """

    name: str
    failures: int
    at: datetime
    client: str | None = None
    retry_after_seconds: float | None = None


@event_type
@attrs.frozen
class OperatorLocked:
    """Too many wrong passwords in a row: no sign-in is tried until ``until``."""

    name: str
    failures: int
    at: datetime
    until: datetime


@event_type
@attrs.frozen
class OperatorSignedOut:
    """The operator ended a session (the sign-out button)."""

    name: str
    session_id: str
    at: datetime
