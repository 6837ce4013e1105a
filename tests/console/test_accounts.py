"""Operator accounts on both stores: hashes beside the log, throttling, locks, sessions."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import argon2
import attrs
import pytest

from aftercall.operator_store import open_operator_store
from events.operators import operator_stream
from events.store import EventStore
from tests.console.harness import FAST_HASHER
from web.console.accounts import (
    CredentialStore,
    NoSuchOperator,
    OperatorAccounts,
    OperatorExists,
    Refused,
    SignedIn,
    SignInPolicy,
    WeakPassword,
)

PASSWORD = "a long enough password"
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@attrs.define
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def credentials(store: EventStore) -> AsyncIterator[CredentialStore]:
    async with open_operator_store(store) as found:
        yield found


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def accounts(store: EventStore, credentials: CredentialStore, clock: Clock) -> OperatorAccounts:
    return OperatorAccounts(
        store,
        credentials,
        SignInPolicy(free_failures=2, first_delay=1.0, max_delay=8.0, lock_after=5),
        hasher=FAST_HASHER,
        clock=clock,
    )


async def _log_text(store: EventStore) -> str:
    return json.dumps([[e.type, e.data, e.metadata] for e in await store.read_all(limit=10_000)])


async def test_an_operator_is_added_listed_and_removed_with_no_password_in_the_log(
    store: EventStore, accounts: OperatorAccounts, credentials: CredentialStore
) -> None:
    await accounts.add("ana", PASSWORD, by="test")
    with pytest.raises(OperatorExists):
        await accounts.add("ana", PASSWORD + "!", by="test")
    assert [o.name for o in await accounts.list()] == ["ana"]
    stored = await credentials.credential("ana")
    assert stored is not None
    assert stored.password_hash.startswith("$argon2id$")

    signed = await accounts.sign_in("ana", PASSWORD)
    assert isinstance(signed, SignedIn)
    await accounts.remove("ana", by="test")
    assert await accounts.list() == []
    assert await accounts.session(signed.token) is None  # removing ends the sessions
    with pytest.raises(NoSuchOperator):
        await accounts.remove("ana")

    types = [e.type for e in await store.read_stream(operator_stream("ana"))]
    assert types == ["OperatorAdded", "OperatorSignedIn", "OperatorRemoved"]
    text = await _log_text(store)
    assert PASSWORD not in text
    assert "argon2" not in text
    assert signed.token not in text
    assert stored.password_hash.split("$")[-1] not in text


@pytest.mark.parametrize(
    ("name", "password", "error"),
    [
        ("Ana", PASSWORD, ValueError),  # names are lower case: no two accounts by case
        ("ana smith", PASSWORD, ValueError),
        ("", PASSWORD, ValueError),
        ("ana", "short", WeakPassword),
        ("ana", " padded password ", WeakPassword),
        ("ana", "x" * 1025, WeakPassword),
    ],
)
async def test_names_and_passwords_are_checked(
    accounts: OperatorAccounts, name: str, password: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await accounts.add(name, password)
    assert await accounts.list() == []


async def test_wrong_passwords_slow_down_then_lock_the_name(
    store: EventStore, accounts: OperatorAccounts, clock: Clock
) -> None:
    await accounts.add("ana", PASSWORD, by="test")
    first = await accounts.sign_in("ana", "wrong password 1", client="203.0.113.9")
    assert first == Refused("wrong", "Wrong name or password.", None)
    second = await accounts.sign_in("ana", "wrong password 2")
    assert isinstance(second, Refused)
    assert second.retry_after == 1.0
    # Too soon: refused without a check, even with the right password.
    early = await accounts.sign_in("ana", PASSWORD)
    assert isinstance(early, Refused)
    assert early.reason == "throttled"
    for wait, attempt in ((1.0, 3), (2.0, 4)):
        clock.advance(wait)
        refused = await accounts.sign_in("ana", f"wrong password {attempt}")
        assert isinstance(refused, Refused)
        assert refused.reason == "wrong"
    clock.advance(4.0)
    locked = await accounts.sign_in("ana", "wrong password 5")
    assert isinstance(locked, Refused)
    assert locked.reason == "locked"
    assert "locked" in locked.message
    clock.advance(60)
    still = await accounts.sign_in("ana", PASSWORD)
    assert isinstance(still, Refused)
    assert still.reason == "locked"

    clock.advance(15 * 60)
    assert isinstance(await accounts.sign_in("ana", PASSWORD), SignedIn)
    # A right password forgets the wrong ones before it.
    assert (await accounts.list())[0].failures == 0
    assert isinstance(await accounts.sign_in("ana", "wrong again"), Refused)
    clock.advance(0.1)
    assert isinstance(await accounts.sign_in("ana", PASSWORD), SignedIn)

    events = await store.read_stream(operator_stream("ana"))
    refusals = [e.data for e in events if e.type == "OperatorSignInRefused"]
    assert [r["failures"] for r in refusals] == [1, 2, 3, 4, 5, 1]
    assert refusals[0]["client"] == "203.0.113.9"
    assert [e.type for e in events].count("OperatorLocked") == 1
    assert "wrong password" not in await _log_text(store)


async def test_an_unknown_name_gets_the_same_answers_and_leaves_no_trace(
    store: EventStore, accounts: OperatorAccounts, clock: Clock
) -> None:
    await accounts.add("ana", PASSWORD, by="test")
    head = await store.head()
    answers = []
    for _ in range(5):
        answers.append(await accounts.sign_in("nobody", "some password"))
        clock.advance(10)
    assert [a.reason for a in answers if isinstance(a, Refused)] == ["wrong"] * 4 + ["locked"]
    assert isinstance(await accounts.sign_in("nobody", "some password"), Refused)
    assert await store.head() == head  # no stream for a name nobody has


async def test_sessions_expire_and_end_on_sign_out_and_new_passwords(
    store: EventStore, accounts: OperatorAccounts, clock: Clock
) -> None:
    await accounts.add("ana", PASSWORD, by="test")
    one = await accounts.sign_in("ana", PASSWORD)
    two = await accounts.sign_in("ana", PASSWORD)
    assert isinstance(one, SignedIn)
    assert isinstance(two, SignedIn)
    assert one.token != two.token
    assert one.session.csrf_token != two.session.csrf_token
    session = await accounts.session(one.token)
    assert session is not None
    assert session.name == "ana"
    assert await accounts.session("not a token") is None
    assert await accounts.session("x" * 10_000) is None

    await accounts.sign_out(one.token)
    assert await accounts.session(one.token) is None
    assert await accounts.session(two.token) is not None

    await accounts.set_password("ana", PASSWORD + " new", by="test")
    assert await accounts.session(two.token) is None
    assert isinstance(await accounts.sign_in("ana", PASSWORD), Refused)
    three = await accounts.sign_in("ana", PASSWORD + " new")
    assert isinstance(three, SignedIn)
    clock.advance(12 * 3600 + 1)
    assert await accounts.session(three.token) is None
    assert await accounts.end_expired_sessions() == 1

    types = [e.type for e in await store.read_stream(operator_stream("ana"))]
    assert "OperatorSignedOut" in types
    assert "OperatorPasswordChanged" in types


async def test_the_default_hash_is_argon2id_with_strong_parameters(
    store: EventStore, credentials: CredentialStore
) -> None:
    accounts = OperatorAccounts(store, credentials)
    await accounts.add("ana", PASSWORD, by="test")
    stored = await credentials.credential("ana")
    assert stored is not None
    parameters = argon2.extract_parameters(stored.password_hash)
    assert parameters.type is argon2.Type.ID
    assert parameters.memory_cost >= 64 * 1024
    assert parameters.time_cost >= 3
    assert isinstance(await accounts.sign_in("ana", PASSWORD), SignedIn)


async def test_no_password_is_ever_logged(
    accounts: OperatorAccounts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await accounts.add("ana", PASSWORD, by="test")
    await accounts.sign_in("ana", "the wrong one here")
    await accounts.sign_in("ghost", "another wrong one")
    assert isinstance(await accounts.sign_in("ana", PASSWORD), SignedIn)
    text = caplog.text
    for secret in (PASSWORD, "the wrong one here", "another wrong one"):
        assert secret not in text
