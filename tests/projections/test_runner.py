"""The projection runner against real stores: exactly once, live, rebuilt aside."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from events.store import EventStore, StoreUnavailable
from projections import postgres as pg_models
from projections import sqlite as sqlite_models
from projections.history import HISTORY
from projections.metrics import METRICS
from projections.readmodels import ReadModels
from projections.runner import (
    ALL_PROJECTIONS,
    ProjectionRunner,
    folded_types,
    projection_status,
    rebuild,
)
from tests.projections.conftest import snapshot
from tests.projections.workload import Append, append_all, interleaved

PHONES = 150  # ~3,000 events


def _log(phones: int = PHONES, seed: int = 11) -> list[Append]:
    return list(interleaved(seed, phones))


async def _counters(models: ReadModels) -> dict[tuple[str, str], int]:
    rows = await models.query("SELECT metric, label, count FROM metric_counters")
    return {(r["metric"], r["label"]): int(r["count"]) for r in rows}


def _expected_counters(appends: list[Append]) -> dict[tuple[str, str], int]:
    counted: dict[tuple[str, str], int] = {}

    def bump(key: tuple[str, str]) -> None:
        counted[key] = counted.get(key, 0) + 1

    for append in appends:
        if not append.stream.startswith("phone-"):
            continue
        for event in append.events:
            data = event.data
            match event.type:
                case "CallCompleted":
                    bump(("calls", "completed"))
                case "CallFailed":
                    bump(("calls", "failed"))
                case "AgentTurnFailed":
                    bump(("fallbacks", data["reason"]))
                case "AgentSessionOpened":
                    bump(("agent_sessions", "opened"))
                    if data["reopened"]:
                        bump(("agent_sessions", "reopened"))
                case "ReplyRequested":
                    bump(("replies", data["kind"]))
    return counted


async def test_rebuild_from_zero_equals_the_incrementally_maintained_tables(
    store: EventStore, models: ReadModels
) -> None:
    appends = _log()
    runner = ProjectionRunner(store, models, page_size=97)  # many pages, odd boundaries
    for start in range(0, len(appends), 700):
        await append_all(store, appends[start : start + 700])
        await runner.catch_up()  # incremental: pages over rows written by earlier pages
    assert sum(len(a.events) for a in appends) > 2500
    incremental = await snapshot(models)
    assert len(incremental["message_history"]) > 800
    assert len(incremental["conversations"]) == PHONES

    report = await rebuild(store, models, page_size=1000)
    assert report.events == await store.head()
    assert await snapshot(models) == incremental
    # Past its memory budget a rebuild reads the rows it needs, page by page: same tables.
    await rebuild(store, models, page_size=300, max_cached_rows=500)
    assert await snapshot(models) == incremental
    assert await _counters(models) == _expected_counters(appends)
    positions = {name: c.position for name, c in (await models.checkpoints()).items()}
    assert positions == {p.name: report.position for p in ALL_PROJECTIONS}


def _fields(record: Any) -> tuple[Any, ...]:
    at = record.recorded_at
    return (record.position, record.stream, record.type, record.data, at, at.tzinfo)


async def test_the_projections_read_of_the_log_is_the_stores(
    store: EventStore, models: ReadModels
) -> None:
    await append_all(store, _log(12))
    logged = await store.read_all(after=0, limit=100_000)
    types = folded_types([HISTORY])  # no AgentAsked, AgentAnswered, ...
    assert {r.type for r in logged} - types
    after, pages = 0, 0
    while True:
        page = await models.read_log(store, after, 7, types)
        window = [r for r in logged if r.position > after][:7]
        if not window:
            assert (page.last, page.read, page.records) == (None, 0, [])
            break
        # The checkpoint goes to the end of the window, whether its last event is kept.
        assert (page.last, page.read) == (window[-1].position, len(window))
        assert page.last is not None
        kept = [_fields(r) for r in window if r.type in types]
        assert [_fields(r) for r in page.records] == kept
        after, pages = page.last, pages + 1
    assert pages > 10
    if isinstance(models, pg_models.PostgresReadModels):
        # Times are read in UTC whatever the session's time zone and date style.
        async def odd_session(conn: Any) -> Any:
            await conn.execute("SET LOCAL TIME ZONE 'Asia/Kolkata'")
            await conn.execute("SET LOCAL DateStyle = 'SQL, DMY'")
            return await pg_models._read_log(conn, 0, 100_000, sorted(types))

        rows = await models.database.transaction(odd_session)
        page = pg_models.log_page(rows)
        assert [_fields(r) for r in page.records] == [_fields(r) for r in logged if r.type in types]


class Crash(StoreUnavailable):
    """Stands in for the process dying: like a connection lost before COMMIT, nothing an
    event is to blame for, so the runner does not look for an event to park (it would,
    for an error of any other kind) and ``catch_up`` raises it."""


@pytest.fixture
def crash_before_checkpoint(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The second page fails after its rows are written, before its checkpoint moves.

    Returns the positions of the checkpoints saved (the crash is not one of them).
    """
    saved: list[int] = []

    def check(position: int) -> None:
        if len(saved) == 1:
            saved.append(-1)
            raise Crash(f"crashed before saving checkpoint {position}")
        saved.append(position)

    if hasattr(store, "database"):
        original = pg_models._save_checkpoint

        async def pg_crash(conn: Any, name: str, position: int) -> None:
            check(position)
            await original(conn, name, position)

        monkeypatch.setattr(pg_models, "_save_checkpoint", pg_crash)
    else:
        sqlite_original = sqlite_models._save_checkpoint

        def sqlite_crash(conn: Any, name: str, position: int) -> None:
            check(position)
            sqlite_original(conn, name, position)

        monkeypatch.setattr(sqlite_models, "_save_checkpoint", sqlite_crash)
    return saved


async def test_a_crash_between_the_writes_and_the_checkpoint_cannot_double_count(
    store: EventStore, models: ReadModels, crash_before_checkpoint: list[int]
) -> None:
    appends = _log(40)
    for append in appends:  # in order, so each event's position is known
        await store.append(append.stream, list(append.events))
    runner = ProjectionRunner(store, models, (METRICS,), page_size=300)
    with pytest.raises(Crash):
        await runner.catch_up()
    first_page = crash_before_checkpoint[0]
    # The crashed page's counts went with its transaction; the first page's stayed.
    assert (await models.checkpoints())["metrics"].position == first_page
    first_page_only = [
        Append(
            a.stream, tuple(e for e, p in zip(a.events, positions, strict=True) if p <= first_page)
        )
        for a, positions in _positions(appends)
    ]
    assert await _counters(models) == _expected_counters(first_page_only)

    await ProjectionRunner(store, models, (METRICS,), page_size=300).catch_up()  # restarted
    assert await _counters(models) == _expected_counters(appends)
    after = await snapshot(models, (METRICS,))
    await rebuild(store, models, (METRICS,))
    assert await snapshot(models, (METRICS,)) == after


def _positions(appends: list[Append]) -> list[tuple[Append, list[int]]]:
    """Each append with the positions its events got (appended one by one, in order)."""
    out = []
    position = 0
    for append in appends:
        out.append((append, list(range(position + 1, position + 1 + len(append.events)))))
        position += len(append.events)
    return out


async def test_two_runners_on_one_log_count_every_event_once(
    store: EventStore, models: ReadModels
) -> None:
    """Two processes following the same projections: each page is won by one of them."""
    appends = _log(60, seed=5)
    await append_all(store, appends)
    first = ProjectionRunner(store, models, page_size=50)
    second = ProjectionRunner(store, models, page_size=50)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.catch_up)
        nursery.start_soon(second.catch_up)
    assert await _counters(models) == _expected_counters(appends)
    pages = sum(s.pages for s in first.statistics() + second.statistics())
    assert pages >= 3 * (await store.head()) // 50


async def test_projections_keep_up_while_appends_happen_concurrently(
    store: EventStore, models: ReadModels
) -> None:
    appends = _log(120, seed=3)
    runner = ProjectionRunner(store, models, page_size=200)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await append_all(store, appends, writers=16)  # 16 concurrent writers
            head = await store.head()
            await runner.wait_until(head)
            assert all(s.last_error is None for s in runner.statistics())
            live = await snapshot(models)
            status = await projection_status(store, models)
            assert {s.name: (s.state, s.behind) for s in status} == {
                p.name: ("live", 0) for p in ALL_PROJECTIONS
            }
            nursery.cancel_scope.cancel()
    await rebuild(store, models)
    assert await snapshot(models) == live


async def test_a_failing_projection_is_set_aside_and_never_holds_the_others_back(
    store: EventStore, models: ReadModels
) -> None:
    """The live runner reads each page once for all projections; one that fails is retried
    alone, with backoff, while the others follow the log to its head. (Its store away, as
    here, it stays behind until the store is back; an event it cannot apply is parked
    instead: test_parking.)"""
    from projections.conversations import CONVERSATIONS_PROJECTION
    from projections.model import Projection, Rule, Table, columns

    def boom(_rows: Any, _subject: str, _record: Any) -> None:
        raise StoreUnavailable("boom: its database is away")

    broken = Projection(
        name="broken_metrics",
        version=1,
        tables=(Table("broken_rows", columns("phone text, n int"), key=("phone",)),),
        rules={"ReplyRequested": Rule(apply=boom)},
    )
    sound = (HISTORY, CONVERSATIONS_PROJECTION)
    runner = ProjectionRunner(store, models, (*sound, broken), page_size=200)
    appends = _log(60, seed=8)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await append_all(store, appends, writers=4)
            head = await store.head()
            await runner.wait_until(head, [p.name for p in sound])
            stats = {s.name: s for s in runner.statistics()}
            nursery.cancel_scope.cancel()
    assert stats["broken_metrics"].last_error is not None
    assert "boom" in stats["broken_metrics"].last_error
    assert (stats["broken_metrics"].position or 0) < head
    assert stats["broken_metrics"].parked == 0
    assert await models.parked(["broken_metrics"]) == []
    assert all(stats[p.name].last_error is None and stats[p.name].position == head for p in sound)
    live = await snapshot(models, sound)
    await rebuild(store, models, sound)
    assert await snapshot(models, sound) == live


async def test_a_rebuild_swaps_in_while_the_live_runner_follows(
    store: EventStore, models: ReadModels
) -> None:
    appends = _log(80, seed=9)
    half = len(appends) // 2
    await append_all(store, appends[:half])
    runner = ProjectionRunner(store, models, page_size=300)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await runner.wait_until(await store.head())
            async with trio.open_nursery() as work:
                work.start_soon(append_all, store, appends[half:])
                work.start_soon(rebuild, store, models)
            await runner.wait_until(await store.head())
            live = await snapshot(models)
            nursery.cancel_scope.cancel()
    assert not any(name.endswith("_rebuild") for name in await models.checkpoints())
    await rebuild(store, models)
    assert await snapshot(models) == live
    assert await _counters(models) == _expected_counters(appends)


async def test_new_rules_are_rebuilt_aside_before_they_project(
    store: EventStore, models: ReadModels
) -> None:
    await append_all(store, _log(10))
    await ProjectionRunner(store, models, (HISTORY,)).catch_up()
    before = await snapshot(models, (HISTORY,))
    newer = attrs.evolve(HISTORY, version=HISTORY.version + 1)
    status = await projection_status(store, models, (newer,))
    assert status[0].state == "needs rebuild"
    await ProjectionRunner(store, models, (newer,)).catch_up()
    checkpoints = await models.checkpoints()
    assert checkpoints["history"].version == newer.version
    assert checkpoints["history"].position == await store.head()
    assert await snapshot(models, (newer,)) == before


async def test_status_shows_position_and_lag(store: EventStore, models: ReadModels) -> None:
    await append_all(store, _log(5))
    head = await store.head()
    status = await projection_status(store, models)
    assert [(s.name, s.state) for s in status] == [(p.name, "not built") for p in ALL_PROJECTIONS]
    await models.prepare([HISTORY])
    [history] = await projection_status(store, models, (HISTORY,))
    assert (history.state, history.position, history.behind) == ("behind", 0, head)
    assert history.lag_seconds is not None
    assert history.lag_seconds >= 0
    await ProjectionRunner(store, models, (HISTORY,)).catch_up()
    [history] = await projection_status(store, models, (HISTORY,))
    assert (history.state, history.position, history.behind, history.lag_seconds) == (
        "live",
        head,
        0,
        None,
    )
