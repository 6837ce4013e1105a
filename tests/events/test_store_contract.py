"""The event store contract, run once against each backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid

import pytest
import trio

from events.store import (
    ANY_VERSION,
    NO_STREAM,
    EventStore,
    InvalidEvent,
    InvalidStreamName,
    NewEvent,
    PartialDuplicate,
    WrongExpectedVersion,
    tail,
)


def ev(n: int, type_: str = "Counted", **extra: object) -> NewEvent:
    return NewEvent(type=type_, data={"n": n, **extra})


async def test_append_to_new_stream_starts_at_version_one(store: EventStore) -> None:
    result = await store.append("counter-a", [ev(1), ev(2)], expected_version=NO_STREAM)
    assert result.version == 2
    assert not result.duplicate
    events = await store.read_stream("counter-a")
    assert [e.version for e in events] == [1, 2]
    assert [e.data["n"] for e in events] == [1, 2]
    assert all(e.stream == "counter-a" and e.category == "counter" for e in events)
    assert events[0].position < events[1].position
    assert events[1].position == result.position
    assert await store.stream_version("counter-a") == 2
    assert await store.stream_version("counter-none") == 0


async def test_expected_version_conflict_is_typed_and_writes_nothing(store: EventStore) -> None:
    await store.append("counter-a", [ev(1)], expected_version=NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as info:
        await store.append("counter-a", [ev(2)], expected_version=NO_STREAM)
    assert info.value.expected == 0
    assert info.value.actual == 1
    assert "counter-a" in str(info.value)
    assert await store.stream_version("counter-a") == 1
    result = await store.append("counter-a", [ev(2)], expected_version=1)
    assert result.version == 2


async def test_an_expected_version_ahead_or_behind_the_stream_is_a_conflict(
    store: EventStore,
) -> None:
    """Ahead would leave a gap in the stream's versions, behind would overwrite history."""
    await store.append("counter-a", [ev(1), ev(2)], expected_version=NO_STREAM)
    for expected in (3, 5, 1):
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append("counter-a", [ev(9)], expected_version=expected)
        assert (info.value.expected, info.value.actual) == (expected, 2)
    assert await store.stream_version("counter-a") == 2
    assert [e.data["n"] for e in await store.read_stream("counter-a")] == [1, 2]


async def test_one_stream_twice_in_a_batch_chains_its_versions(store: EventStore) -> None:
    """Requests for one stream in one group-commit batch follow each other (in whatever
    order the tasks ran), each with a version of its own."""
    await store.append("counter-a", [ev(1)])
    versions: dict[int, int] = {}

    async def append(n: int) -> None:
        versions[n] = (await store.append("counter-a", [ev(n)])).version

    async with trio.open_nursery() as nursery:  # both land in one batch
        nursery.start_soon(append, 2)
        nursery.start_soon(append, 3)
    assert sorted(versions.values()) == [2, 3]
    recorded = await store.read_stream("counter-a")
    assert [(e.version, e.data["n"]) for e in recorded[1:]] == sorted(
        (version, n) for n, version in versions.items()
    )


async def test_any_version_appends_whatever_the_version(store: EventStore) -> None:
    await store.append("counter-a", [ev(1)], expected_version=ANY_VERSION)
    result = await store.append("counter-a", [ev(2)])
    assert result.version == 2


async def test_same_event_id_twice_is_reported_not_duplicated(store: EventStore) -> None:
    event_id = uuid.uuid4()
    first = await store.append("phone-+15550001", [NewEvent("Received", {"x": 1}, event_id)])
    again = await store.append(
        "phone-+15550001", [NewEvent("Received", {"x": 1}, event_id)], expected_version=0
    )
    assert again.duplicate
    assert (again.version, again.position) == (first.version, first.position)
    assert len(await store.read_stream("phone-+15550001")) == 1
    # The duplicate check comes before the version check: a stale expected version on a
    # repeated webhook still reports "already there", not a conflict.


async def test_partial_duplicate_is_refused_whole(store: EventStore) -> None:
    known = uuid.uuid4()
    await store.append("counter-a", [NewEvent("Counted", {"n": 1}, known)])
    with pytest.raises(PartialDuplicate):
        await store.append(
            "counter-a", [NewEvent("Counted", {"n": 1}, known), NewEvent("Counted", {"n": 2})]
        )
    assert await store.stream_version("counter-a") == 1


async def test_concurrent_appends_in_one_batch_decide_in_order(store: EventStore) -> None:
    """Many tasks racing on one stream with expected versions: exactly one wins each version."""
    wins: list[int] = []
    conflicts = 0

    async def writer(i: int) -> None:
        nonlocal conflicts
        try:
            await store.append("counter-race", [ev(i)], expected_version=NO_STREAM)
            wins.append(i)
        except WrongExpectedVersion:
            conflicts += 1

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(writer, i)
    assert len(wins) == 1
    assert conflicts == 49
    assert await store.stream_version("counter-race") == 1


async def test_many_concurrent_writers_all_land(store: EventStore) -> None:
    async def writer(i: int) -> None:
        for j in range(10):
            await store.append(f"counter-w{i}", [ev(j)], expected_version=j)

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(writer, i)
    everything = await store.read_all(after=0, limit=10_000)
    assert len(everything) == 400
    positions = [e.position for e in everything]
    assert positions == sorted(positions)
    assert len(set(positions)) == 400
    for i in range(40):
        assert [e.data["n"] for e in await store.read_stream(f"counter-w{i}")] == list(range(10))


async def test_read_stream_from_version_and_limit(store: EventStore) -> None:
    await store.append("counter-a", [ev(i) for i in range(1, 6)])
    assert [e.version for e in await store.read_stream("counter-a", from_version=3)] == [3, 4, 5]
    assert [e.version for e in await store.read_stream("counter-a", 2, limit=2)] == [2, 3]
    assert await store.read_stream("counter-missing") == []


async def test_read_all_after_checkpoint_and_by_category(store: EventStore) -> None:
    await store.append("counter-a", [ev(1)])
    await store.append("phone-+15550001", [ev(2)])
    await store.append("counter-b", [ev(3)])
    everything = await store.read_all()
    assert [e.data["n"] for e in everything] == [1, 2, 3]
    after_first = await store.read_all(after=everything[0].position)
    assert [e.data["n"] for e in after_first] == [2, 3]
    counters = await store.read_all(category="counter")
    assert [e.data["n"] for e in counters] == [1, 3]
    assert await store.read_all(after=everything[-1].position) == []
    assert await store.head() == everything[-1].position


async def test_metadata_and_event_id_round_trip(store: EventStore) -> None:
    event_id = uuid.uuid4()
    meta = {"causation_id": str(uuid.uuid4()), "correlation_id": "call-1"}
    data = {"text": "Olá 👋", "nested": {"list": [1, 2.5, None, True]}}
    await store.append("counter-a", [NewEvent("Counted", data, event_id, meta)])
    [recorded] = await store.read_stream("counter-a")
    assert recorded.event_id == event_id
    assert recorded.metadata == meta
    assert recorded.data == data
    assert recorded.recorded_at.tzinfo is not None


@pytest.mark.parametrize("stream", ["", "x" * 201, "nodash", "Phone-+1555", "phone- spaced", "-id"])
async def test_bad_stream_names_are_refused(store: EventStore, stream: str) -> None:
    with pytest.raises(InvalidStreamName):
        await store.append(stream, [ev(1)])
    assert await store.head() == 0


async def test_unencodable_events_are_refused_before_anything_is_written(
    store: EventStore,
) -> None:
    with pytest.raises(InvalidEvent, match="JSON"):
        await store.append("counter-a", [ev(1), NewEvent("Counted", {"when": object()})])
    with pytest.raises(InvalidEvent, match="JSON"):
        await store.append("counter-a", [NewEvent("Counted", {"n": float("nan")})])
    with pytest.raises(InvalidEvent, match="no events"):
        await store.append("counter-a", [])
    with pytest.raises(InvalidEvent, match="identifier"):
        await store.append("counter-a", [NewEvent("not a type", {})])
    same = uuid.uuid4()
    with pytest.raises(InvalidEvent, match="twice"):
        await store.append("counter-a", [NewEvent("A", {}, same), NewEvent("B", {}, same)])
    assert await store.head() == 0


async def test_a_failed_append_does_not_disturb_its_batch(store: EventStore) -> None:
    """Conflicts and duplicates in one batch fail alone; the others commit."""
    await store.append("counter-x", [ev(0)])
    results: dict[str, object] = {}

    async def good(i: int) -> None:
        results[f"good{i}"] = await store.append(f"counter-g{i}", [ev(i)])

    async def bad() -> None:
        try:
            await store.append("counter-x", [ev(1)], expected_version=NO_STREAM)
        except WrongExpectedVersion as exc:
            results["bad"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bad)
        for i in range(10):
            nursery.start_soon(good, i)
    assert isinstance(results["bad"], WrongExpectedVersion)
    assert len(await store.read_all()) == 11


async def test_wait_for_events_wakes_on_commit(store: EventStore) -> None:
    head = await store.head()
    woke_at: list[int] = []

    async def waiter() -> None:
        await store.wait_for_events(head)
        woke_at.append(await store.head())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke_at == []
            await store.append("counter-a", [ev(1)])
    assert woke_at
    assert woke_at[0] > head


async def test_tail_sees_history_then_live_events_in_order(store: EventStore) -> None:
    await store.append("counter-a", [ev(0)])
    seen: list[int] = []

    async def reader(cancel: trio.CancelScope) -> None:
        async for event in tail(store, after=0):
            seen.append(int(event.data["n"]))
            if len(seen) == 21:
                cancel.cancel()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, nursery.cancel_scope)
            for i in range(1, 21):
                await store.append("counter-a", [ev(i)])
    assert seen == list(range(21))


async def test_tail_by_category_skips_others_without_stalling(store: EventStore) -> None:
    await store.append("phone-+15550001", [ev(-1)])
    seen: list[int] = []

    async def reader(cancel: trio.CancelScope) -> None:
        async for event in tail(store, after=0, category="counter"):
            seen.append(int(event.data["n"]))
            if len(seen) == 3:
                cancel.cancel()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, nursery.cancel_scope)
            for i in range(3):
                await store.append("phone-+15550001", [ev(100 + i)])
                await store.append("counter-a", [ev(i)])
    assert seen == [0, 1, 2]


async def test_statistics_count_appends(store: EventStore) -> None:
    await store.append("counter-a", [ev(1)])
    await store.append("counter-a", [NewEvent("X", {}, uuid.UUID(int=1))])
    await store.append("counter-a", [NewEvent("X", {}, uuid.UUID(int=1))])
    stats = store.statistics()
    assert stats.appends == 3
    assert stats.duplicates == 1
    assert stats.head == await store.head()


@pytest.mark.parametrize("text", ["nul \x00 inside", "lone \ud800 surrogate"])
async def test_text_no_backend_can_store_is_refused_alike(store: EventStore, text: str) -> None:
    with pytest.raises(InvalidEvent, match="for 'counter-a'"):
        await store.append("counter-a", [NewEvent("Counted", {"text": text})])
    with pytest.raises(InvalidEvent):
        await store.append("counter-a", [NewEvent("Counted", {}, metadata={text: 1})])
    assert await store.head() == 0


async def test_same_id_twice_in_one_batch_keeps_the_first_requests_data(
    store: EventStore,
) -> None:
    """Two callers report one outside fact at the same moment (the post-call webhook and
    the batch monitor): the first one's event is recorded, with its own data, and the
    second is told it was a duplicate."""
    fact = uuid.uuid4()
    outcomes: dict[str, object] = {}

    async def report(source: str) -> None:
        outcomes[source] = await store.append(
            "phone-+15550009", [NewEvent("CallCompleted", {"source": source}, fact)]
        )

    async with trio.open_nursery() as nursery:  # both land in one group-commit batch
        nursery.start_soon(report, "first")
        nursery.start_soon(report, "second")
    [recorded] = await store.read_stream("phone-+15550009")
    winner = recorded.data["source"]
    loser = "second" if winner == "first" else "first"
    assert outcomes[winner].duplicate is False  # type: ignore[attr-defined]
    assert outcomes[loser].duplicate is True  # type: ignore[attr-defined]
