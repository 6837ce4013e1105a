"""An event a projection cannot apply is parked, never retried forever (projections.parking).

Against the real stores and their read models: the poison is a real event in the log that a
real read model cannot take (a code out of the ``int`` column's range, refused by PostgreSQL
and by SQLite; a time that does not parse), or a rule made to fail for one event. Time is
Trio's mock clock (the ``clock`` fixture): backoffs pass without waiting.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import trio
import trio.testing

from events.conversation import DeliveryStatusChanged, delivery_stream
from events.postgres import open_postgres_store
from events.postgres_bridge import PostgresOptions
from events.store import EventStore, NewEvent, StoreUnavailable
from projections import queries
from projections.history import HISTORY
from projections.metrics import METRICS
from projections.model import Projection, Recorded, RowSet, Rule, Table, columns
from projections.parking import (
    PARK_AFTER_TRIES,
    ParkedEvent,
    error_message,
    is_transient,
    next_move,
    summarize,
)
from projections.readmodels import ReadModels
from projections.rules import fitting_code, phone_of
from projections.runner import (
    ALL_PROJECTIONS,
    ProjectionRunner,
    projection_status,
    rebuild,
    retry_parked,
)
from tests.postgres_server import PostgresServer
from tests.projections.conftest import real_time_limit, snapshot
from tests.projections.workload import START, append_all, encode, interleaved, phone_number

PHONE = phone_number(7)
OUT_OF_RANGE = 99999999999999999999999  # the incident's error_code
#: The pauses between the tries of one event before it is parked (0.1 s, doubling).
BACKOFF = sum(0.1 * 2**n for n in range(PARK_AFTER_TRIES - 1))


def status(
    sid: str, state: str = "delivered", code: int | None = None, message: str | None = None
) -> NewEvent:
    return encode(
        DeliveryStatusChanged(
            message_sid=sid,
            status=state,
            at=START + timedelta(minutes=1),
            error_code=code,
            error_message=message,
        )
    )


def unreadable_time(sid: str) -> NewEvent:
    """A status whose time does not parse: the history's rule cannot fold it (a writer with
    a bug recorded it; the log keeps it for ever)."""
    return NewEvent(
        "DeliveryStatusChanged",
        {"message_sid": sid, "status": "delivered", "at": "yesterday", "error_code": None},
    )


def codes_projection(broken: Iterable[str] = (), *, name: str = "codes") -> Projection:
    """A real read model of the delivery statuses that keeps each error code as it came,
    in an ``int`` column (as the history did before it checked them), and whose rule
    raises for the message sids in ``broken`` (a rule with a bug, until it is fixed)."""
    table = Table(
        f"{name}_rows",
        columns("message_sid text, status text, error_code int, position int"),
        key=("message_sid",),
    )

    def apply(rows: RowSet, _phone: str, record: Recorded) -> None:
        data = record.data
        if data["message_sid"] in broken:
            raise RuntimeError(f"a bug in the rule, for {data['message_sid']}")
        rows.put(
            table.name,
            {
                "message_sid": data["message_sid"],
                "status": data["status"],
                "error_code": data.get("error_code"),
                "position": record.position,
            },
        )

    return Projection(
        name,
        1,
        (table,),
        {
            "DeliveryStatusChanged": Rule(
                apply, lambda _phone, data: [(table.name, (data["message_sid"],))]
            )
        },
        subject=phone_of,
    )


async def append_one(store: EventStore, event: NewEvent, phone: str = PHONE) -> int:
    return (await store.append(delivery_stream(phone), [event])).position


async def append_statuses(store: EventStore, sids: Iterable[str]) -> None:
    for sid in sids:
        await append_one(store, status(sid))


async def rows_of(models: ReadModels, projection: Projection) -> dict[str, dict[str, Any]]:
    [table] = projection.tables
    found = await models.query(f"SELECT * FROM {table.name}")
    return {row["message_sid"]: row for row in found}


def keys(parked: Iterable[ParkedEvent]) -> list[tuple[Any, ...]]:
    """What must be the same however an event came to be parked (not when, not how often)."""
    return [(e.projection, e.position, e.stream, e.event_id, e.type, e.error_type) for e in parked]


# -- the runner ------------------------------------------------------------------------------
async def test_an_event_that_cannot_be_applied_is_parked_after_its_tries_and_the_rest_goes_on(
    store: EventStore,
    models: ReadModels,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The incident: a status whose error code no ``int`` column can hold. The live runner
    finds it in a page of many, tries it alone with backoff, parks it once, and goes on to
    the head of the log, while the history (which checks codes) takes it as it is."""
    codes = codes_projection()
    await append_statuses(store, [f"SMa{i:03d}" for i in range(40)])
    poison = status("SMbad", "failed", code=OUT_OF_RANGE, message="Unknown error")
    position = await append_one(store, poison)
    await append_statuses(store, [f"SMb{i:03d}" for i in range(40)])
    await append_all(store, list(interleaved(5, 6, first=100)))
    head = await store.head()
    runner = ProjectionRunner(store, models, (HISTORY, codes), page_size=64)
    caplog.set_level(logging.DEBUG, logger="projections.runner")
    started = trio.current_time()
    with real_time_limit():
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await runner.wait_until(head)
            nursery.cancel_scope.cancel()
    took = trio.current_time() - started

    [parked] = await runner.parked()
    assert keys([parked]) == [
        (
            "codes",
            position,
            delivery_stream(PHONE),
            str(poison.event_id),
            "DeliveryStatusChanged",
            # asyncpg refuses to encode it for a bigint; sqlite3 for an INTEGER.
            "DataError" if hasattr(store, "database") else "OverflowError",
        )
    ]
    assert parked.attempts == PARK_AFTER_TRIES
    assert took >= BACKOFF  # the tries were spread out, not hammered
    stats = {s.name: s for s in runner.statistics()}
    assert (stats["codes"].position, stats["codes"].parked, stats["codes"].last_error) == (
        head,
        1,
        None,
    )
    assert (stats["history"].position, stats["history"].parked) == (head, 0)
    rows = await rows_of(models, codes)
    assert {f"SM{half}{i:03d}" for half in "ab" for i in range(40)} <= set(rows)
    assert "SMbad" not in rows
    # One warning line for the whole affair: no line per try, no traceback.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.exc_info for r in warnings] == [None]
    assert f"projection codes parked event {position}" in warnings[0].getMessage()
    assert f"after {PARK_AFTER_TRIES} tries" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "away",
    [
        lambda: StoreUnavailable("PostgreSQL at db:5432 unreachable for 10 s"),
        lambda: ConnectionResetError("connection reset by peer"),
    ],
    ids=["store-unavailable", "connection-reset"],
)
async def test_a_store_that_is_away_parks_nothing(
    store: EventStore,
    models: ReadModels,
    clock: trio.testing.MockClock,
    away: Callable[[], Exception],
) -> None:
    """Failures that are the store's, not the event's, are retried as long as it takes:
    here three times the tries that would park an event (more on PostgreSQL, whose bridge
    retries a connection error on a new connection before it gives up)."""
    failing = PARK_AFTER_TRIES * 3
    calls = 0
    table = Table("outage_rows", columns("message_sid text, n int"), key=("message_sid",))

    def apply(rows: RowSet, _phone: str, record: Recorded) -> None:
        nonlocal calls
        if record.data["message_sid"] == "SMwait":
            calls += 1
            if calls <= failing:
                raise away()
        rows.put(table.name, {"message_sid": record.data["message_sid"], "n": record.position})

    outage = Projection("outage", 1, (table,), {"DeliveryStatusChanged": Rule(apply)}, phone_of)
    await append_statuses(store, ["SM1", "SMwait", "SM2"])
    runner = ProjectionRunner(store, models, (outage,))
    with real_time_limit():
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await runner.wait_until(await store.head())
            nursery.cancel_scope.cancel()
    assert calls > failing
    assert await runner.parked() == []
    assert {r["message_sid"] for r in await models.query("SELECT * FROM outage_rows")} == {
        "SM1",
        "SMwait",
        "SM2",
    }
    # catch_up (the commands') raises it, as before: nothing to park. The store stays away
    # for good here, whatever the bridge's retry budget.
    calls, failing = 0, 10**9
    await append_statuses(store, ["SMwait"])
    with pytest.raises((type(away()), StoreUnavailable)):  # the bridge's word for it
        await ProjectionRunner(store, models, (outage,)).catch_up()
    assert await models.parked(["outage"]) == []


async def test_retry_applies_parked_events_once_their_cause_is_fixed(
    store: EventStore, models: ReadModels, clock: trio.testing.MockClock
) -> None:
    broken = {"SMfix"}
    codes = codes_projection(broken)
    await append_statuses(store, ["SM1", "SM2"])
    position = await append_one(store, status("SMfix", "read"))
    await append_statuses(store, ["SM3"])
    with real_time_limit():
        await ProjectionRunner(store, models, (codes,), page_size=3).catch_up()
    [parked] = await models.parked(["codes"])
    assert (parked.position, parked.error_type) == (position, "RuntimeError")
    assert "a bug in the rule, for SMfix" in parked.error_message
    [state] = await projection_status(store, models, (codes,))
    assert (state.state, state.parked) == ("live", (parked,))

    # Still broken: it stays parked, with its newest error and one more try.
    [outcome] = await retry_parked(store, models, (codes,))
    assert (outcome.result, outcome.event.attempts) == ("parked", PARK_AFTER_TRIES + 1)
    assert keys(await models.parked(["codes"])) == keys([parked])

    broken.clear()  # the fix
    [outcome] = await retry_parked(store, models, (codes,))
    assert (outcome.result, outcome.event.position) == ("applied", position)
    assert await models.parked(["codes"]) == []
    rows = await rows_of(models, codes)
    assert (rows["SMfix"]["status"], rows["SMfix"]["position"]) == ("read", position)
    assert set(rows) == {"SM1", "SM2", "SMfix", "SM3"}
    assert await retry_parked(store, models, (codes,)) == []
    live = await snapshot(models, (codes,))
    await rebuild(store, models, (codes,))
    assert await snapshot(models, (codes,)) == live


async def test_history_and_metrics_take_an_error_code_out_of_range(
    store: EventStore, models: ReadModels
) -> None:
    """Read as it is: the log is immutable, and already holds such codes."""
    await append_one(store, status("SMbig", "failed", code=OUT_OF_RANGE, message="Unknown"))
    await append_one(store, status("SMok", "undelivered", code=63016, message="Outside window"))
    await ProjectionRunner(store, models).catch_up()
    assert await models.parked([p.name for p in ALL_PROJECTIONS]) == []
    history = {m["message_sid"]: m for m in await queries.history(models, PHONE)}
    assert (history["SMbig"]["error_code"], history["SMbig"]["error_message"]) == (
        None,
        f"Unknown (error code {OUT_OF_RANGE})",
    )
    assert (history["SMok"]["error_code"], history["SMok"]["error_message"]) == (
        63016,
        "Outside window",
    )
    messages = await models.query("SELECT message_id, error_code FROM metric_messages")
    assert {m["message_id"]: m["error_code"] for m in messages} == {"SMbig": None, "SMok": 63016}
    assert (await queries.metrics(models))["twilio_errors"] == {"63016": 1}


async def test_a_rebuild_parks_what_the_live_projections_parked(
    store: EventStore, models: ReadModels, clock: trio.testing.MockClock
) -> None:
    """Whether the event breaks a rule (folded in memory) or its table (refused by the
    database when the page is written), and whether the rebuild keeps its rows in memory
    or reads them: the same tables and the same parked events as the live ones."""
    codes = codes_projection()
    await append_all(store, list(interleaved(2, 12)))
    unreadable = unreadable_time("SMtime")
    first = await append_one(store, unreadable)
    refused = status("SMbig", "failed", code=OUT_OF_RANGE)
    second = await append_one(store, refused, phone_number(8))
    await append_all(store, list(interleaved(3, 12, first=50)))
    projections = (*ALL_PROJECTIONS, codes)
    with real_time_limit():
        await ProjectionRunner(store, models, projections, page_size=50).catch_up()
    live = await snapshot(models, projections)
    live_parked = keys(await models.parked([p.name for p in projections]))
    assert [(p[0], p[1]) for p in live_parked] == [("history", first), ("codes", second)]
    assert live_parked[0][3] == str(unreadable.event_id)

    for chosen, cached in (
        (projections, 1_000_000),
        ((codes,), 1_000_000),  # refused when written
        ((HISTORY,), 1_000_000),  # breaks the rule while folded in memory
        ((HISTORY, METRICS, codes), 10),  # rows read page by page
    ):
        with real_time_limit():
            report = await rebuild(store, models, chosen, page_size=64, max_cached_rows=cached)
        assert report.parked == sum(1 for p in live_parked if p[0] in {c.name for c in chosen})
        assert report.position == await store.head()
        assert await snapshot(models, projections) == live
        assert keys(await models.parked([p.name for p in projections])) == live_parked
    assert not any(name.endswith("_rebuild") for name in await models.checkpoints())


async def test_a_failing_rule_parks_only_its_own_projection(
    store: EventStore, models: ReadModels, clock: trio.testing.MockClock
) -> None:
    await append_all(store, list(interleaved(6, 10)))
    position = await append_one(store, unreadable_time("SMtime"))
    await append_all(store, list(interleaved(7, 10, first=40)))
    runner = ProjectionRunner(store, models, page_size=200)
    with real_time_limit():
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await runner.wait_until(await store.head())
            nursery.cancel_scope.cancel()
    [parked] = await runner.parked()
    # Only the history reads a delivered status's time.
    assert (parked.projection, parked.position, parked.error_type) == (
        "history",
        position,
        "ValueError",
    )
    assert [summary.describe() for summary in summarize([parked])] == [
        f"projection history: 1 parked event; the first, position {position}"
        f" (DeliveryStatusChanged), failed with ValueError: {parked.error_message}"
    ]


# -- the rules ------------------------------------------------------------------------------
def test_next_move_blames_an_event_only_when_it_is_alone() -> None:
    bug = RuntimeError("boom")

    def move(exc: Exception, window: int, tries: int = 1, suspect: bool = True) -> str:
        return next_move(exc, window=window, suspect=suspect, tries=tries, park_after=3)

    assert move(bug, 5000) == "narrow"
    assert move(bug, 1, tries=1) == "again"
    assert move(bug, 1, tries=2) == "again"
    assert move(bug, 1, tries=3) == "park"
    assert move(bug, 0) == "retry"  # no page: nothing to blame
    assert move(bug, 1, suspect=False) == "retry"  # no event of its own in the page
    assert move(StoreUnavailable("away"), 1, tries=9) == "retry"
    assert move(TimeoutError(), 1, tries=9) == "retry"


def test_errors_of_the_store_are_transient_and_those_of_the_data_are_not(
    tmp_path: Path,
) -> None:
    assert is_transient(StoreUnavailable("PostgreSQL at db unreachable"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(ValueError("Invalid isoformat string: 'yesterday'"))
    assert not is_transient(OverflowError("Python int too large to convert to SQLite INTEGER"))

    path = tmp_path / "locked.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("CREATE TABLE t (n INTEGER NOT NULL)")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError) as locked:
            other.execute("INSERT INTO t VALUES (1)")
        assert is_transient(locked.value)  # SQLITE_BUSY: another writer holds the file
        holder.execute("ROLLBACK")
        with pytest.raises(sqlite3.IntegrityError) as refused:
            other.execute("INSERT INTO t VALUES (NULL)")
        assert not is_transient(refused.value)
    finally:
        holder.close()
        other.close()


async def test_postgresql_errors_are_told_apart_by_their_sqlstate(
    postgres: PostgresServer, pg_schema: str
) -> None:
    async with open_postgres_store(postgres.dsn, PostgresOptions(schema=pg_schema)) as store:

        async def fails(sql: str) -> BaseException:
            async def run(conn: Any) -> None:
                await conn.execute(sql)

            with pytest.raises(Exception) as caught:  # noqa: PT011 - its kind is checked below
                await store.database.transaction(run, retry=False)
            return caught.value

        cancelled = await fails("SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)")
        assert is_transient(cancelled)  # 57014: cancelled, the statement is not at fault
        out_of_range = await fails("SELECT 99999999999999999999999::bigint")
        assert not is_transient(out_of_range)  # 22003, as the incident's
        assert not is_transient(await fails("SELECT 1 FROM no_such_table"))  # 42P01


def test_an_error_code_is_kept_only_when_its_column_can_hold_it() -> None:
    assert fitting_code(63016, "Outside window") == (63016, "Outside window")
    assert fitting_code(None, None) == (None, None)
    assert fitting_code(2**63 - 1, None) == (2**63 - 1, None)
    assert fitting_code(2**63, None) == (None, f"error code {2**63}")
    assert fitting_code(OUT_OF_RANGE, "Unknown") == (None, f"Unknown (error code {OUT_OF_RANGE})")
    assert fitting_code("30008", None) == (None, "error code 30008")
    assert fitting_code(True, None) == (None, "error code True")
    assert fitting_code(10**60, None)[1] == f"error code {str(10**60)[:39]}…"


def test_an_error_text_is_one_line_without_passwords() -> None:
    text = error_message(
        RuntimeError("could not reach\npostgresql://aftercall:s3cret@db:5432/app\n" + "x" * 900)
    )
    assert "s3cret" not in text
    assert "postgresql://aftercall:***@db:5432/app" in text
    assert "\n" not in text
    assert len(text) == 500


def test_summaries_count_per_projection_and_name_the_first() -> None:
    def parked(name: str, position: int) -> ParkedEvent:
        return ParkedEvent(
            name,
            position,
            "delivery-+15551230001",
            str(UUID(int=position)),
            "DeliveryStatusChanged",
            "DataError",
            "value out of int64 range",
            5,
            START,
        )

    found = summarize([parked("history", 9), parked("metrics", 9), parked("history", 4)])
    assert [(s.projection, s.count, s.first.position) for s in found] == [
        ("history", 2, 4),
        ("metrics", 1, 9),
    ]
    assert "+1555" not in found[0].describe()  # /readyz answers anyone: no phone number
