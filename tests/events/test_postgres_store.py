"""The PostgreSQL store and its bridge: what the contract suite cannot show.

Lost connections, a server that is down, two processes migrating at once, callers that
are not children of the loop's task, and the asyncio exception handler. Every test runs
against the real server, in its own schema, under an absolute ``fail_after``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
import trio

import events.postgres as pg
from events._group_commit import AppendRequest
from events.migrations import POSTGRES_MIGRATIONS
from events.postgres import PostgresEventStore, open_postgres_store
from events.postgres_bridge import Connection, Database, PostgresOptions, open_database
from events.store import (
    NO_STREAM,
    InvalidEvent,
    NewEvent,
    PartialDuplicate,
    StoreUnavailable,
    WrongExpectedVersion,
    encode_payloads,
)
from tests.events.conftest import Terminate


def ev(n: int) -> NewEvent:
    return NewEvent("Counted", {"n": n})


async def test_every_connection_terminated_the_next_calls_succeed(
    pg_store: PostgresEventStore, pg_app: str, terminate: Terminate
) -> None:
    with trio.fail_after(20):
        await pg_store.append("counter-a", [ev(1)], expected_version=NO_STREAM)
        # Put several pooled connections to use, so more than one dies.
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(pg_store.read_stream, "counter-a")
        generation = pg_store._listener.generation

        killed = await terminate(pg_app)
        assert killed >= 3  # pool, the writer's connection, the listener

        result = await pg_store.append("counter-a", [ev(2)], expected_version=1)
        assert result.version == 2
        assert [e.data["n"] for e in await pg_store.read_stream("counter-a")] == [1, 2]
        assert [e.data["n"] for e in await pg_store.read_all()] == [1, 2]
        await pg_store._listener.wait_connected(generation + 1)
        assert pg_store.statistics().appends == 2


async def test_waiters_wake_on_another_processes_commit_after_the_listener_came_back(
    pg_store: PostgresEventStore, pg_dsn: str, pg_schema: str, pg_app: str, terminate: Terminate
) -> None:
    with trio.fail_after(20):
        generation = pg_store._listener.generation
        await terminate(pg_app, "AND query LIKE 'LISTEN%'")
        await pg_store._listener.wait_connected(generation + 1)
        # Slow re-checks off: only a NOTIFY can wake the waiter now.
        pg_store.fallback_interval = 3600
        head = await pg_store.head()
        async with (
            open_postgres_store(
                pg_dsn,
                PostgresOptions(schema=pg_schema, application_name=f"{pg_app}-b", pool_size=2),
            ) as other,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(pg_store.wait_for_events, head)
            await trio.testing.wait_all_tasks_blocked()
            await other.append("counter-b", [ev(1)])
    assert pg_store.statistics().head > head


async def test_while_the_listener_is_down_waiters_re_check(
    pg_store: PostgresEventStore,
    pg_dsn: str,
    pg_schema: str,
    pg_app: str,
    terminate: Terminate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(*_args: object) -> Any:
        raise ConnectionRefusedError("test: the listener cannot reconnect")

    monkeypatch.setattr(Database, "_connect_listener", refuse)
    with trio.fail_after(20):
        await terminate(pg_app, "AND query LIKE 'LISTEN%'")
        while pg_store.listening:  # the termination reaches the loop as a socket event
            await pg_store._listener._changed.wait()
        head = await pg_store.head()
        woke: list[bool] = []

        async def waiter() -> None:
            await pg_store.wait_for_events(head)
            woke.append(pg_store.listening)

        async with (
            open_postgres_store(
                pg_dsn,
                PostgresOptions(schema=pg_schema, application_name=f"{pg_app}-b", pool_size=2),
            ) as other,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await other.append("counter-b", [ev(1)])
    assert woke == [False]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_database_down_at_start_up_is_one_clear_line_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = _closed_port()
    dsn = f"postgresql://aftercall:s3cret-Pa55@127.0.0.1:{port}/test"
    started = trio.current_time()
    with trio.fail_after(10), pytest.raises(StoreUnavailable) as info:
        async with open_postgres_store(dsn, PostgresOptions(startup_retry_for=0.5)):
            pytest.fail("opened a store on a closed port")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "\n" not in message
    everything = "".join(traceback.format_exception(info.value)) + caplog.text + repr(info.value)
    assert "s3cret" not in everything
    assert trio.current_time() - started < 5


async def test_a_bad_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(StoreUnavailable) as info:
        async with open_postgres_store("postgresql://u:s3cret@host:notaport/db"):
            pytest.fail("opened")
    assert "s3cret" not in str(info.value)


async def test_two_stores_opening_on_a_fresh_schema_take_turns_migrating(
    pg_dsn: str, pg_schema: str, pg_app: str
) -> None:
    versions: list[int] = []

    async def open_and_append(name: str, opened: trio.Event, done: trio.Event) -> None:
        async with open_postgres_store(
            pg_dsn, PostgresOptions(schema=pg_schema, application_name=pg_app, pool_size=2)
        ) as store:
            opened.set()
            await store.append("counter-race", [ev(len(name))])
            versions.append(await store.stream_version("counter-race"))
            await done.wait()

    with trio.fail_after(20):
        events = [trio.Event() for _ in range(3)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_and_append, "a", events[0], events[2])
            nursery.start_soon(open_and_append, "bb", events[1], events[2])
            await events[0].wait()
            await events[1].wait()
            while len(versions) < 2:
                await trio.testing.wait_all_tasks_blocked()
            events[2].set()
    assert sorted(versions)[-1] == 2
    async with open_database(pg_dsn, PostgresOptions(schema=pg_schema, pool_size=1)) as database:
        rows = await database.fetch("SELECT version FROM schema_migrations")
    assert [r["version"] for r in rows] == [m.version for m in POSTGRES_MIGRATIONS]


@attrs.define
class Outcome:
    values: list[object] = attrs.field(factory=list)
    error: BaseException | None = None
    done: trio.Event = attrs.field(factory=trio.Event)


async def _use_store(store: PostgresEventStore, outcome: Outcome) -> None:
    """Everything a request handler would do, from a task that never saw the loop."""
    try:
        await store.append("counter-outside", [ev(1)])
        outcome.values.append(await store.stream_version("counter-outside"))
        outcome.values.append(await store.database.fetchval("SELECT 40 + $1::int", 2))
        async with store.database.listen("outside") as notifications:
            first = await notifications.receive()
            assert first.resync
            await store.database.execute("SELECT pg_notify('outside', 'hello')")
            outcome.values.append((await notifications.receive()).payload)
    except BaseException as exc:  # reported to the test, which fails with it
        outcome.error = exc
    finally:
        outcome.done.set()


async def test_bridge_calls_from_tasks_outside_the_loops_scope(
    pg_dsn: str, pg_schema: str, pg_app: str
) -> None:
    """The Hypercorn shape: the loop's owner and the request handlers are siblings.

    The second user is a system task run in an *empty* context: it would fail if any call
    relied on trio-asyncio's context variable (which pytest-trio would copy to a plain
    test task, hiding the trap).
    """

    async def owner(*, task_status: trio.TaskStatus[PostgresEventStore]) -> None:
        async with open_postgres_store(
            pg_dsn, PostgresOptions(schema=pg_schema, application_name=pg_app, pool_size=3)
        ) as store:
            task_status.started(store)
            await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as owners:
            store = await owners.start(owner)
            sibling = Outcome()
            async with trio.open_nursery() as handlers:
                handlers.start_soon(_use_store, store, sibling)
            bare = Outcome()
            trio.lowlevel.spawn_system_task(_use_store, store, bare, context=contextvars.Context())
            await bare.done.wait()
            owners.cancel_scope.cancel()
    for outcome in (sibling, bare):
        if outcome.error is not None:
            raise outcome.error
    assert sibling.values == [1, 42, "hello"]
    assert bare.values == [2, 42, "hello"]


async def test_a_stray_asyncio_error_is_logged_not_fatal(
    pg_store: PostgresEventStore, caplog: pytest.LogCaptureFixture
) -> None:
    async def stray(_conn: Connection) -> None:
        asyncio.get_running_loop().call_exception_handler(
            {"message": "stray callback failed", "exception": RuntimeError("boom")}
        )

    with trio.fail_after(10):
        await pg_store.database.run(stray)
        await trio.testing.wait_all_tasks_blocked()
        await pg_store.append("counter-a", [ev(1)])
    assert "stray callback failed" in caplog.text
    assert "boom" in caplog.text


async def test_transaction_rolls_back_on_error_and_commits_otherwise(
    pg_store: PostgresEventStore,
) -> None:
    database: Database = pg_store.database
    await database.execute("CREATE TABLE read_model (k text PRIMARY KEY, v int)")

    async def write(conn: Connection, k: str, fail: bool) -> int:
        await conn.execute("INSERT INTO read_model VALUES ($1, 1)", k)
        if fail:
            raise ValueError("projection bug")
        return int(await conn.fetchval("SELECT count(*) FROM read_model"))

    with trio.fail_after(10):
        with pytest.raises(ValueError, match="projection bug"):
            await database.transaction(write, "a", True)
        assert await database.transaction(write, "b", False) == 1
        rows = await database.fetch("SELECT k FROM read_model")
    assert [r["k"] for r in rows] == ["b"]


@attrs.define
class LoseBatchReply:
    """Stands in for the writer's connection; the answer to one statement never arrives.

    ``lose`` picks the statement (the batch call, or the COMMIT of a planned batch);
    ``commit`` says whether it reached the server (and committed) before the connection
    died; otherwise the connection dies with it unsent, after the store counted it as sent,
    which is all the store can know of a call in flight.
    """

    conn: Any
    commit: bool
    lose: str
    fired: bool = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    async def _maybe_lose(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        if self.lose in query and not self.fired:
            self.fired = True
            if self.commit:
                await getattr(self.conn, method)(query, *args)
            self.conn.terminate()
            raise ConnectionResetError("test: the answer was lost")
        return await getattr(self.conn, method)(query, *args)

    async def fetch(self, query: str, *args: Any) -> Any:
        return await self._maybe_lose("fetch", query, args)

    async def execute(self, query: str, *args: Any) -> Any:
        return await self._maybe_lose("execute", query, args)


def _lose_first_reply(
    monkeypatch: pytest.MonkeyPatch, commit: bool, lose: str = "append_batch("
) -> list[LoseBatchReply]:
    original_get = pg._WriterConnection.get
    proxies: list[LoseBatchReply] = []

    async def get(self: pg._WriterConnection) -> Any:
        conn = await original_get(self)
        if not proxies:
            proxies.append(LoseBatchReply(conn, commit, lose))
            return proxies[0]
        return conn

    monkeypatch.setattr(pg._WriterConnection, "get", get)
    return proxies


@pytest.mark.parametrize("committed", [True, False])
async def test_a_batch_whose_answer_is_lost_gets_its_true_outcome(
    pg_store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """Resolved through its token: the caller hears "written", never "duplicate"."""
    proxies = _lose_first_reply(monkeypatch, committed)
    event_id = uuid.uuid4()
    with trio.fail_after(20):
        result = await pg_store.append(
            "phone-+15550001", [NewEvent("Received", {"x": 1}, event_id)], NO_STREAM
        )
        recorded = await pg_store.read_stream("phone-+15550001")
    assert proxies
    assert proxies[0].fired
    assert not result.duplicate
    assert result.version == 1
    assert [e.event_id for e in recorded] == [event_id]
    assert recorded[0].position == result.position
    assert pg_store.statistics().duplicates == 0


async def test_a_lost_batch_is_answered_request_by_request_as_it_was_decided(
    pg_store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written, conflicting, duplicate within the batch, duplicate of the log: each caller
    of a batch whose answer was lost hears what the committed call decided for it."""
    earlier = NewEvent("Counted", {"n": 0})
    await pg_store.append("counter-old", [earlier])
    first, second = NewEvent("Counted", {"n": 1}), NewEvent("Counted", {"n": 2})

    def request(stream: str, evs: list[NewEvent], expected: int | None) -> AppendRequest:
        return AppendRequest(stream, evs, expected, encode_payloads(stream, evs))

    batch = [
        request("counter-s", [first, second], NO_STREAM),
        request("counter-s", [NewEvent("Counted", {"n": 3})], NO_STREAM),
        request("counter-t", [first, second], None),
        request("counter-old", [earlier], None),
        request("counter-u", [NewEvent("Counted", {"n": 4}), earlier], None),
    ]
    # A batch with a duplicate is planned in Python, in a transaction: lose its COMMIT's answer.
    proxies = _lose_first_reply(monkeypatch, commit=True, lose="COMMIT")
    with trio.fail_after(20):
        await pg_store._write_batch(batch)
        recorded = await pg_store.read_stream("counter-s")
    assert proxies[0].fired
    written, conflict, in_batch, in_log, partial = batch
    assert written.result is not None
    assert not written.result.duplicate
    assert (written.result.version, written.result.position) == (2, recorded[1].position)
    assert isinstance(conflict.error, WrongExpectedVersion)
    assert in_batch.result == attrs.evolve(written.result, duplicate=True)
    assert in_log.result is not None
    assert in_log.result.duplicate
    assert in_log.result.version == 1
    assert isinstance(partial.error, PartialDuplicate)
    assert [e.event_id for e in recorded] == [first.event_id, second.event_id]


async def test_what_jsonb_refuses_fails_its_own_append_alone(pg_store: PostgresEventStore) -> None:
    """NUL and lone surrogates are valid JSON but not jsonb: refused before the batch."""
    outcomes: dict[str, object] = {}

    async def append(name: str, data: Mapping[str, object]) -> None:
        try:
            outcomes[name] = await pg_store.append(f"counter-{name}", [NewEvent("T", data)])
        except InvalidEvent as exc:
            outcomes[name] = exc

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append, "nul", {"text": "a\x00b"})
            nursery.start_soon(append, "surrogate", {"k\ud800": 1})
            nursery.start_soon(append, "good", {"text": "a\\u0000b \U0001f44b"})
        [good] = await pg_store.read_stream("counter-good")
    assert "NUL" in str(outcomes["nul"])
    assert "surrogate" in str(outcomes["surrogate"])
    assert good.data == {"text": "a\\u0000b \U0001f44b"}


async def test_the_batch_state_query_probes_indexes(pg_store: PostgresEventStore) -> None:
    """Message DB's habit: prove the plan, since a generic plan outlives the table's size."""
    database = pg_store.database
    for start in range(0, 2000, 500):
        await pg_store.append("counter-big", [ev(n) for n in range(start, start + 500)])
    await database.execute("ANALYZE events")
    streams = [f"counter-{i}" for i in range(100)]
    ids = [uuid.uuid4() for _ in range(100)]

    async def plans(conn: Connection) -> list[str]:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            rows = await conn.fetch("EXPLAIN " + pg._BATCH_STATE_SQL, streams, ids)
        finally:
            await conn.execute("RESET plan_cache_mode")
        return [str(row[0]) for row in rows]

    plan = "\n".join(await database.run(plans))
    assert "Seq Scan" not in plan, plan
    assert "events_event_id_key" in plan
    assert "events_stream_version_key" in plan


async def test_two_batches_in_flight_decide_every_append_once(
    pg_dsn: str, pg_schema: str, pg_app: str
) -> None:
    """``writers=2``: two batches commit concurrently, each decided under the log's lock."""
    async with open_postgres_store(
        pg_dsn, PostgresOptions(schema=pg_schema, application_name=pg_app, pool_size=2), writers=2
    ) as store:
        conflicts: list[WrongExpectedVersion] = []

        async def appender(index: int) -> None:
            for version in range(5):
                await store.append(f"lane-{index % 10}", [ev(version)])
                await store.append(f"own-{index}", [ev(version)], expected_version=version)
                try:  # the same expectation again: already met, so it must fail
                    await store.append(f"own-{index}", [ev(version)], expected_version=version)
                except WrongExpectedVersion as exc:
                    conflicts.append(exc)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index in range(40):
                    nursery.start_soon(appender, index)
            everything = await store.read_all(limit=10_000)
    assert store.statistics().batches < store.statistics().appends
    assert len(conflicts) == 40 * 5
    positions = [e.position for e in everything]
    assert positions == sorted(set(positions))
    for index in range(10):
        versions = [e.version for e in everything if e.stream == f"lane-{index}"]
        assert versions == list(range(1, 21))
    for index in range(40):
        assert [e.version for e in everything if e.stream == f"own-{index}"] == [1, 2, 3, 4, 5]


async def test_append_batch_writes_a_streams_requests_in_one_call(
    pg_store: PostgresEventStore,
) -> None:
    """The fast path decides a stream with several requests itself (a webhook's fact and
    the actor's decision for one phone meet in a batch all the time); a broken chain, an id
    already recorded, or a stream that is elsewhere than expected is left to the planner."""
    await pg_store.append("phone-+15550002", [ev(1), ev(2)], NO_STREAM)
    log = pg_store.log

    async def call(
        expected: list[int | None], before: list[int], ids: list[uuid.UUID]
    ) -> tuple[str, list[int] | None, int]:
        requests = list(range(1, len(expected) + 1))

        async def run(conn: Connection) -> tuple[str, list[int] | None, int]:
            [row] = await conn.fetch(
                pg._APPEND_BATCH_CALL, log.lock[0], log.lock[1], log.channel,
                uuid.uuid4(), uuid.uuid4(), [], ["phone-+15550002"] * len(expected),
                expected, before, requests, [1] * len(requests), ["Counted"] * len(requests),
                ['{"n": 0}'] * len(requests), ["{}"] * len(requests), ids, 0.0,
            )  # fmt: skip
            head = await conn.fetchval("SELECT count(*) FROM events")
            return row[0], None if row[1] is None else list(row[1]), head

        return await pg_store.database.run(run)

    # the actor expects 2, a webhook's fact expects nothing: 3 and 4, in one call
    assert await call([2, None], [0, 1], [uuid.uuid4(), uuid.uuid4()]) == ("ok", [2, 3], 4)
    # a later request expecting what the earlier one does not leave: nothing written
    assert await call([4, 4], [0, 1], [uuid.uuid4(), uuid.uuid4()]) == ("replan", None, 4)
    # behind, ahead, or an id already recorded: nothing written
    assert await call([3], [0], [uuid.uuid4()]) == ("replan", None, 4)
    assert await call([6], [0], [uuid.uuid4()]) == ("replan", None, 4)
    [first] = await pg_store.read_stream("phone-+15550002", limit=1)
    assert await call([None], [0], [first.event_id]) == ("replan", None, 4)
    assert [e.version for e in await pg_store.read_stream("phone-+15550002")] == [1, 2, 3, 4]
