"""Operator accounts: argon2 passwords, throttled sign-ins, locks, sessions, CSRF tokens.

Where things are kept, and why:

- The password's argon2id hash, the count of wrong passwords in a row and the lock are in
  ``operator_credentials``; sessions in ``operator_sessions`` (``CredentialStore``; the two
  backends are in ``aftercall.operator_store``, in the database of the log). Not in the
  log: the log is immutable and widely read, and a hash must be replaceable and wipeable.
  Every decision (is the name free, how many failures so far) is one atomic statement on
  those tables, so two workers signing in the same name at once count both failures.
- What happened (added, password changed, removed, signed in, refused, locked, signed out)
  is recorded in the operator's stream (``events.operators``), without password material.
- A session is a random token in an HttpOnly cookie; the database keeps only its SHA-256
  (a copy of the table opens no session), and a per-session CSRF token for the forms.
  Removing an operator or changing the password ends their sessions at once, which a
  signed cookie could not do.

Wrong passwords slow down, then lock (`SignInPolicy`): the first few are free, then each
try must wait twice as long as the last (1 s, 2 s, 4 s ... at most 30 s), and ten in a row
lock the name for 15 minutes. A refused try is not checked at all (it costs an attacker
nothing, and the server no argon2 work). A name nobody has gets the same answers, the
same argon2 work and the same throttle (kept in this process's memory), so the answers do
not tell which names exist.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

import argon2
import attrs
import trio

from events.codec import to_new_event
from events.operators import (
    Actor,
    InvalidOperatorName,
    OperatorAdded,
    OperatorLocked,
    OperatorPasswordChanged,
    OperatorRemoved,
    OperatorSignedIn,
    OperatorSignedOut,
    OperatorSignInRefused,
    operator_stream,
    validate_operator_name,
)
from events.store import ANY_VERSION, EventStore

logger = logging.getLogger(__name__)

MIN_PASSWORD: Final = 10
#: argon2 takes any length; a megabyte password would only be a way to burn CPU.
MAX_PASSWORD: Final = 1024
#: Session tokens are ``secrets.token_urlsafe(32)``: 43 characters.
MAX_TOKEN: Final = 64
#: Names the in-memory throttle of unknown names remembers (the oldest are forgotten).
_REMEMBERED_UNKNOWN: Final = 10_000


class AccountError(ValueError):
    """A request about accounts that cannot be done, with the reason to show."""


class OperatorExists(AccountError):
    pass


class NoSuchOperator(AccountError):
    pass


class WeakPassword(AccountError):
    pass


@attrs.frozen
class SignInPolicy:
    """How wrong passwords slow down and then lock a name (see the module docstring)."""

    free_failures: int = 3
    first_delay: float = 1.0
    max_delay: float = 30.0
    lock_after: int = 10
    lock_seconds: float = 15 * 60.0
    session_seconds: float = 12 * 3600.0

    def wait_after(self, failures: int) -> float:
        """Seconds the next try must wait after ``failures`` wrong passwords in a row."""
        if failures < self.free_failures:
            return 0.0
        return float(min(self.first_delay * 2 ** (failures - self.free_failures), self.max_delay))


@attrs.frozen
class Credential:
    """A row of ``operator_credentials``."""

    name: str
    password_hash: str = attrs.field(repr=False)
    added_at: datetime
    failures: int = 0
    last_failure_at: datetime | None = None
    locked_until: datetime | None = None


@attrs.frozen
class SessionRecord:
    """A row of ``operator_sessions``: the token only as its SHA-256."""

    token_hash: str = attrs.field(repr=False)
    session_id: str
    name: str
    csrf_token: str = attrs.field(repr=False)
    created_at: datetime
    expires_at: datetime


class CredentialStore(Protocol):
    """Where hashes, failure counts and sessions are kept (``aftercall.operator_store``).

    Each method is one atomic step, safe with several processes on one database.
    """

    async def credential(self, name: str) -> Credential | None: ...

    async def credentials(self) -> list[Credential]: ...

    async def add(self, name: str, password_hash: str, at: datetime) -> bool:
        """Insert the account; False (nothing written) when the name is taken."""
        ...

    async def set_password(self, name: str, password_hash: str) -> int | None:
        """Replace the hash, clear failures and end every session (how many); None when
        there is no such operator."""
        ...

    async def remove(self, name: str) -> int | None:
        """Delete the account and its sessions (how many); None when there is none."""
        ...

    async def note_failure(
        self, name: str, at: datetime, lock_after: int, locked_until: datetime
    ) -> Credential | None:
        """Count one more wrong password (locking the account at ``lock_after``); the
        row after it, None when the account is gone."""
        ...

    async def note_success(self, name: str) -> None:
        """Forget the wrong passwords before this right one."""
        ...

    async def add_session(self, session: SessionRecord) -> None: ...

    async def session(self, token_hash: str, now: datetime) -> SessionRecord | None:
        """The unexpired session with this token hash, whose operator still exists."""
        ...

    async def end_session(self, token_hash: str) -> SessionRecord | None: ...

    async def end_expired_sessions(self, now: datetime) -> int: ...


@attrs.frozen
class OperatorSession:
    """A signed-in operator, as a request handler sees it."""

    name: str
    session_id: str
    csrf_token: str = attrs.field(repr=False)
    expires_at: datetime


@attrs.frozen
class SignedIn:
    session: OperatorSession
    #: The cookie's value: shown to the browser once, stored nowhere but as its hash.
    token: str = attrs.field(repr=False)


@attrs.frozen
class Refused:
    """A sign-in refused; ``message`` is what the sign-in page says (the same whether
    the name exists or not)."""

    reason: Literal["wrong", "throttled", "locked"]
    message: str
    retry_after: float | None = None


@attrs.frozen
class OperatorInfo:
    """One line of ``aftercall operators list``."""

    name: str
    added_at: datetime
    failures: int
    locked_until: datetime | None


def token_hash(token: str) -> str:
    """What the database keeps of a session token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_password(password: str) -> str:
    """The password unchanged if an operator may have it; `WeakPassword` naming why not."""
    if len(password) < MIN_PASSWORD:
        raise WeakPassword(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise WeakPassword(f"the password may have at most {MAX_PASSWORD} characters")
    if password.strip() != password:
        # Almost always a pasted newline or space that the next sign-in will not repeat.
        raise WeakPassword("the password starts or ends with white space")
    if "\x00" in password:
        raise WeakPassword("the password contains a NUL character")
    return password


@attrs.define
class _Tally:
    failures: int = 0
    last_failure_at: datetime | None = None
    locked_until: datetime | None = None


def _now() -> datetime:
    return datetime.now(UTC)


@attrs.define(eq=False)
class OperatorAccounts:
    """The accounts of one deployment: add, list, remove, sign in, check a session."""

    store: EventStore
    credentials: CredentialStore
    policy: SignInPolicy = attrs.field(factory=SignInPolicy)
    hasher: argon2.PasswordHasher = attrs.field(factory=argon2.PasswordHasher)
    clock: Callable[[], datetime] = _now
    #: argon2 is made to take a lot of memory and CPU: one hash at a time per process
    #: keeps a burst of sign-ins from taking every core from the conversations.
    _hashing: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    _unknown: OrderedDict[str, _Tally] = attrs.field(factory=OrderedDict)
    _dummy_hash: str | None = None

    # -- accounts -------------------------------------------------------------------------
    async def add(self, name: str, password: str, *, by: Actor = "cli") -> None:
        validate_operator_name(name)
        check_password(password)
        hashed = await self._hash(password)
        at = self.clock()
        if not await self.credentials.add(name, hashed, at):
            raise OperatorExists(f"there is already an operator named {name!r}")
        try:
            await self._record(name, OperatorAdded(name=name, added_at=at, by=by))
        except BaseException:
            # Not in the log, so not an account: nobody could see who added it.
            with trio.CancelScope(shield=True):
                await self.credentials.remove(name)
            raise

    async def set_password(self, name: str, password: str, *, by: Actor = "cli") -> None:
        validate_operator_name(name)
        check_password(password)
        ended = await self.credentials.set_password(name, await self._hash(password))
        if ended is None:
            raise NoSuchOperator(f"there is no operator named {name!r}")
        await self._record(
            name,
            OperatorPasswordChanged(
                name=name, changed_at=self.clock(), by=by, sessions_ended=ended
            ),
        )

    async def remove(self, name: str, *, by: Actor = "cli") -> None:
        validate_operator_name(name)
        ended = await self.credentials.remove(name)
        if ended is None:
            raise NoSuchOperator(f"there is no operator named {name!r}")
        await self._record(
            name, OperatorRemoved(name=name, removed_at=self.clock(), by=by, sessions_ended=ended)
        )

    async def list(self) -> list[OperatorInfo]:
        return [
            OperatorInfo(c.name, c.added_at, c.failures, c.locked_until)
            for c in sorted(await self.credentials.credentials(), key=lambda c: c.name)
        ]

    async def exists(self, name: str) -> bool:
        return await self.credentials.credential(name) is not None

    # -- signing in -----------------------------------------------------------------------
    async def sign_in(
        self, name: str, password: str, *, client: str | None = None
    ) -> SignedIn | Refused:
        """Check a name and password (see the module docstring for the throttle)."""
        now = self.clock()
        try:
            validate_operator_name(name)
            known = await self.credentials.credential(name)
        except InvalidOperatorName:
            known = None
        if known is None:
            return await self._unknown_sign_in(name, password, now)
        refused = self._refusal(known.failures, known.last_failure_at, known.locked_until, now)
        if refused is not None:
            logger.info("console: sign-in as %s refused unchecked (%s)", name, refused.reason)
            return refused
        if len(password) > MAX_PASSWORD or not await self._verify(known.password_hash, password):
            return await self._wrong_password(known, now, client)
        await self.credentials.note_success(name)
        if self.hasher.check_needs_rehash(known.password_hash):
            # Parameters were raised since the hash was made; the password is at hand now.
            await self.credentials.set_password(name, await self._hash(password))
        return await self._open_session(name, now, client)

    async def _wrong_password(
        self, known: Credential, now: datetime, client: str | None
    ) -> Refused:
        policy = self.policy
        until = now + timedelta(seconds=policy.lock_seconds)
        after = await self.credentials.note_failure(known.name, now, policy.lock_after, until)
        failures = after.failures if after is not None else known.failures + 1
        wait = policy.wait_after(failures)
        logger.info("console: wrong password for %s (%d in a row)", known.name, failures)
        await self._record(
            known.name,
            OperatorSignInRefused(
                name=known.name,
                failures=failures,
                at=now,
                client=client,
                retry_after_seconds=wait or None,
            ),
        )
        # A lock that ends in the future was set by this failure: the try was only checked
        # because no lock was running. (The count is only reset by a right password, so
        # after a lock runs out one more wrong password locks the name again.)
        if after is not None and after.locked_until is not None and after.locked_until > now:
            logger.warning(
                "console: operator %s locked after %d wrong passwords", known.name, failures
            )
            await self._record(
                known.name,
                OperatorLocked(
                    name=known.name, failures=failures, at=now, until=after.locked_until
                ),
            )
            return self._locked(after.locked_until, now)
        return Refused("wrong", "Wrong name or password.", wait or None)

    async def _unknown_sign_in(self, name: str, password: str, now: datetime) -> Refused:
        """The same answers, work and throttle as for a real name (module docstring)."""
        key = name[:100]
        tally = self._unknown.get(key) or _Tally()
        refused = self._refusal(tally.failures, tally.last_failure_at, tally.locked_until, now)
        if refused is not None:
            return refused
        await self._verify(await self._dummy(), password[:MAX_PASSWORD])
        tally.failures += 1
        tally.last_failure_at = now
        if tally.failures >= self.policy.lock_after:
            tally.locked_until = now + timedelta(seconds=self.policy.lock_seconds)
        self._unknown[key] = tally
        self._unknown.move_to_end(key)
        while len(self._unknown) > _REMEMBERED_UNKNOWN:
            self._unknown.popitem(last=False)
        logger.info("console: sign-in as an unknown operator name refused")
        if tally.locked_until is not None and tally.locked_until > now:
            return self._locked(tally.locked_until, now)
        wait = self.policy.wait_after(tally.failures)
        return Refused("wrong", "Wrong name or password.", wait or None)

    def _refusal(
        self,
        failures: int,
        last_failure_at: datetime | None,
        locked_until: datetime | None,
        now: datetime,
    ) -> Refused | None:
        if locked_until is not None and now < locked_until:
            return self._locked(locked_until, now)
        wait = self.policy.wait_after(failures)
        if wait and last_failure_at is not None:
            due = last_failure_at + timedelta(seconds=wait)
            if now < due:
                seconds = (due - now).total_seconds()
                return Refused(
                    "throttled",
                    f"Too many wrong passwords: wait {_seconds(seconds)} before trying again.",
                    seconds,
                )
        return None

    def _locked(self, until: datetime, now: datetime) -> Refused:
        seconds = max(1.0, (until - now).total_seconds())
        return Refused(
            "locked",
            "Too many wrong passwords: this name is locked for "
            f"{_seconds(seconds)}. Ask another operator, or wait.",
            seconds,
        )

    async def _open_session(self, name: str, now: datetime, client: str | None) -> SignedIn:
        token = secrets.token_urlsafe(32)
        record = SessionRecord(
            token_hash=token_hash(token),
            session_id=secrets.token_hex(8),
            name=name,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + timedelta(seconds=self.policy.session_seconds),
        )
        await self.credentials.add_session(record)
        await self._record(
            name,
            OperatorSignedIn(
                name=name,
                session_id=record.session_id,
                at=now,
                expires_at=record.expires_at,
                client=client,
            ),
        )
        return SignedIn(_session(record), token)

    # -- sessions -------------------------------------------------------------------------
    async def session(self, token: str | None) -> OperatorSession | None:
        """The signed-in operator a cookie's token names, if it is still valid."""
        if not token or len(token) > MAX_TOKEN:
            return None
        record = await self.credentials.session(token_hash(token), self.clock())
        return None if record is None else _session(record)

    async def sign_out(self, token: str) -> None:
        if not token or len(token) > MAX_TOKEN:
            return
        record = await self.credentials.end_session(token_hash(token))
        if record is not None:
            await self._record(
                record.name,
                OperatorSignedOut(name=record.name, session_id=record.session_id, at=self.clock()),
            )

    async def end_expired_sessions(self) -> int:
        return await self.credentials.end_expired_sessions(self.clock())

    # -- internals ------------------------------------------------------------------------
    async def _record(self, name: str, event: object) -> None:
        # ANY_VERSION: nothing is decided by folding this stream (the decisions are the
        # atomic statements on the credentials tables); the events are the record.
        await self.store.append(operator_stream(name), [to_new_event(event)], ANY_VERSION)

    async def _hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self.hasher.hash, password, limiter=self._hashing)

    async def _verify(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return bool(self.hasher.verify(password_hash, password))
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False

        return await trio.to_thread.run_sync(verify, limiter=self._hashing)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
        return self._dummy_hash


def _session(record: SessionRecord) -> OperatorSession:
    return OperatorSession(record.name, record.session_id, record.csrf_token, record.expires_at)


def _seconds(seconds: float) -> str:
    whole = max(1, round(seconds))
    if whole < 120:
        return f"{whole} s"
    return f"{round(whole / 60)} minutes"


def describe(operators: Sequence[OperatorInfo], now: datetime) -> list[str]:
    """``aftercall operators list``'s lines."""
    lines = []
    for operator in operators:
        state = ""
        if operator.locked_until is not None and operator.locked_until > now:
            state = f"  locked until {operator.locked_until:%Y-%m-%d %H:%M} UTC"
        elif operator.failures:
            state = f"  {operator.failures} wrong password(s) in a row"
        lines.append(f"{operator.name}  added {operator.added_at:%Y-%m-%d %H:%M} UTC{state}")
    return lines
