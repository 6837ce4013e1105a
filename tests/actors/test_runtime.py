"""The actor runtime against real stores (SQLite and PostgreSQL), on trio's mock clock.

Time is virtual, so a 60 s cool-down or a 30 minute idle timeout takes no real time. Most
tests autojump (the clock leaps to the next deadline whenever every task waits) through
``AutojumpStore``, which holds the clock still while a call is in the database; without it
the clock would leap while SQLite's thread or PostgreSQL's socket works. Tests that check
an exact instant (passivation, shutdown) move a manual clock themselves. No test sleeps in
real time, and none wraps a wait in ``fail_after``: a deadline is a place the clock jumps to.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from actors import (
    ActorSettings,
    ActorSystemClosed,
    InvalidActorId,
    MailboxFull,
    SupervisionPolicy,
    open_actor_system,
)
from events import EventStore, decode
from events.supervision import ActorStopped, supervision_stream
from tests.actors.tally import (
    ARM,
    FOREVER,
    START_FAILING_RESOURCE,
    TICK,
    WAKE,
    AutojumpStore,
    Probe,
    counted_in_log,
    request,
    tally_factory,
)

NO_PASSIVATION = ActorSettings(idle_timeout=math.inf)


@pytest.fixture
async def autojump_store(
    store: EventStore, mock_clock: trio.testing.MockClock
) -> AsyncIterator[AutojumpStore]:
    """The ``store`` fixture (each backend), autojumping the mock clock while idle."""
    wrapped = AutojumpStore(store, mock_clock)
    yield wrapped
    wrapped.stop_jumping()  # the store closes on a still clock


EXACT_BACKOFF = SupervisionPolicy(
    max_restarts=3, within_seconds=30, backoff_initial=0.1, jitter=0, cooldown_seconds=60
)


async def test_messages_arrive_in_order_per_actor_under_concurrent_tells(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    probe = Probe()
    ids = [f"a{i}" for i in range(100)]
    producers, per_producer = 20, 50
    settings = ActorSettings(idle_timeout=math.inf, mailbox_size=4)
    async with open_actor_system(tally_factory(probe), store, settings) as system:

        async def produce(p: int) -> None:
            rng = random.Random(p)
            for i in range(per_producer):
                await system.tell(rng.choice(ids), (p, i))

        async with trio.open_nursery() as nursery:
            for p in range(producers):
                nursery.start_soon(produce, p)
        total = producers * per_producer
        await probe.wait_for(lambda: len(probe.handled) == total)
        stats = system.statistics()

    assert stats.messages_told == stats.messages_handled == total
    assert stats.activations == len({a for a, _, _ in probe.handled}) <= 100
    assert not probe.overlaps
    for actor_id in ids:
        messages = probe.messages(actor_id)
        for p in range(producers):
            sequence = [i for q, i in messages if q == p]
            assert sequence == sorted(sequence), (actor_id, p)
    assert sorted(m for _, m, _ in probe.handled) == [
        (p, i) for p in range(producers) for i in range(per_producer)
    ]
    # Shutdown deactivated every actor once.
    assert len(probe.deactivations) == stats.activations


async def test_racing_tells_and_passivations_never_activate_an_id_twice(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    # The clock jumps while the store works, so with a 1 s idle timeout actors passivate
    # all the time, in the middle of everything; a slow deactivate widens the window in
    # which a new tell must wait for the old activation.
    probe = Probe(deactivate_delay=0.5)
    ids = [f"r{i}" for i in range(10)]
    settings = ActorSettings(idle_timeout=1, mailbox_size=2)
    async with open_actor_system(tally_factory(probe), store, settings) as system:

        async def produce(p: int) -> None:
            rng = random.Random(p)
            for i in range(30):
                await system.tell(rng.choice(ids), (p, i))
                await trio.sleep(rng.choice([0, 0, 0.3, 2]))

        async with trio.open_nursery() as nursery:
            for p in range(10):
                nursery.start_soon(produce, p)
        await probe.wait_for(lambda: len(probe.handled) == 300)
        stats = system.statistics()

    assert not probe.overlaps
    assert stats.passivations > 0
    assert stats.activations > len(ids)
    for actor_id in ids:
        messages = probe.messages(actor_id)
        for p in range(10):
            sequence = [i for q, i in messages if q == p]
            assert sequence == sorted(sequence)
    assert len({m for _, m, _ in probe.handled}) == 300


async def test_crash_restarts_and_recovers_from_the_log(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    probe = Probe()
    probe.crash_before[("x", 2)] = 1  # fails before recording 2
    probe.crash_after[("x", 3)] = 1  # fails after recording 3: must not count it twice
    settings = ActorSettings(idle_timeout=math.inf, supervision=EXACT_BACKOFF)
    async with open_actor_system(tally_factory(probe), store, settings) as system:
        for n in (1, 2, 3, 4):
            await request(store, system, "x", n)
        await request(store, system, "y", 1)
        await probe.wait_for(lambda: [n for a, n, _ in probe.counted if a == "x"] == [1, 2, 3, 4])
        await probe.wait_for(lambda: ("y", 1) in [(a, n) for a, n, _ in probe.counted])
        x = system.actor_statistics("x")
        y = system.actor_statistics("y")
        stats = system.statistics()

    assert await counted_in_log(store, "x") == [1, 2, 3, 4]
    assert await counted_in_log(store, "y") == [1]
    assert x is not None
    assert y is not None
    assert x.crashes == 2
    assert x.last_failure is not None
    assert x.last_failure.error_type == "tests.actors.tally.Boom"
    assert x.last_failure.error_message == "tally 3 of x failed"
    assert not x.last_failure.stopped
    # The other actor never noticed.
    assert y.crashes == 0
    assert len(probe.times(probe.activations, "y")) == 1
    assert stats.restarts == 2
    assert stats.crashes == 2
    assert stats.stops == 0
    # Each restart came after its backoff: 0.1 s, then 0.2 s (the second in the window).
    crash_times = [t for a, _, t in probe.crashes if a == "x"]
    activations = probe.times(probe.activations, "x")
    assert len(activations) == 3
    assert activations[1] - crash_times[0] == pytest.approx(0.1)
    assert activations[2] - crash_times[1] == pytest.approx(0.2)
    # A crashed instance is still deactivated (it may own a socket).
    assert len(probe.times(probe.deactivations, "x")) == 3
    assert not probe.overlaps


async def test_a_failing_resource_task_crashes_only_its_actor(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    probe = Probe()
    settings = ActorSettings(idle_timeout=math.inf, supervision=EXACT_BACKOFF)
    async with open_actor_system(tally_factory(probe), store, settings) as system:
        await system.tell("x", START_FAILING_RESOURCE)
        await request(store, system, "y", 1)
        await probe.wait_for(lambda: len(probe.times(probe.activations, "x")) == 2)
        await probe.wait_for(lambda: len(probe.counted) == 1)
        stats = system.statistics()
        assert system.is_active("y")

    assert stats.crashes == 1
    assert stats.last_failure is not None
    assert stats.last_failure.actor_id == "x"
    assert stats.last_failure.error_message == "the resource failed"
    assert probe.times(probe.activations, "x")[1] == pytest.approx(1.1)
    assert await counted_in_log(store, "y") == [1]


async def test_past_the_restart_limit_the_actor_stops_records_it_and_comes_back(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    probe = Probe()
    probe.crash_before[("x", 1)] = FOREVER
    settings = ActorSettings(idle_timeout=math.inf, supervision=EXACT_BACKOFF)
    wall = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    async with open_actor_system(
        tally_factory(probe), store, settings, wall_clock=lambda: wall
    ) as system:
        await request(store, system, "x", 1)
        # 1 crash + 3 restarts, each crashing: the 4th crash is past the limit.
        await probe.wait_for(lambda: len(probe.crashes) == 4)
        stop_time = probe.crashes[-1][2]
        # The poison is gone (say a bug fix): the next message brings the actor back,
        # but not before the cool-down.
        probe.crash_before.clear()
        await system.tell("x", WAKE)
        await request(store, system, "y", 1)
        await probe.wait_for(lambda: {a for a, _, _ in probe.counted} == {"x", "y"})
        stats = system.statistics()

    activations = probe.times(probe.activations, "x")
    assert len(activations) == 5
    assert activations[4] == pytest.approx(stop_time + 60)
    assert await counted_in_log(store, "x") == [1]
    assert await counted_in_log(store, "y") == [1]
    assert stats.stops == 1
    assert stats.restarts == 3
    assert stats.crashes == 4
    assert stats.last_failure is not None
    assert stats.last_failure.stopped
    recorded = await store.read_stream(supervision_stream("x"))
    assert [decode(e) for e in recorded] == [
        ActorStopped(
            actor_id="x",
            error_type="tests.actors.tally.Boom",
            error_message="tally 1 of x failed",
            restarts=3,
            cooldown_seconds=60,
            at=wall,
        )
    ]
    # The actor's own stream was left alone by the runtime.
    assert {e.type for e in await store.read_stream("tally-x")} == {
        "TallyRequested",
        "TallyCounted",
    }
    assert not probe.overlaps


async def test_a_message_for_a_stopped_actor_waits_for_the_cooldown(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    probe = Probe()
    probe.crash_before[("x", 1)] = 1
    policy = SupervisionPolicy(max_restarts=0, cooldown_seconds=60)
    settings = ActorSettings(idle_timeout=math.inf, supervision=policy)
    async with open_actor_system(tally_factory(probe), store, settings) as system:
        await system.tell("x", WAKE)
        await probe.wait_for(lambda: len(probe.handled) == 1)
        # The message that crashes it is the only one: nothing is left to carry over.
        await request(store, system, "x", 1)
        await probe.wait_for(lambda: len(probe.deactivations) == 1)
        stopped_at = trio.current_time()
        # From the crashed instance's deactivation to recording the stop nothing blocks:
        # once every task waits, the actor has left the registry and is appending.
        await trio.testing.wait_all_tasks_blocked()
        assert not system.is_active("x")
        stats = system.statistics()
        assert (stats.stops, stats.cooling_down, stats.restarts) == (1, 1, 0)
        await trio.sleep(10)
        await system.tell("x", WAKE)
        waiting = system.actor_statistics("x")
        assert waiting is not None
        assert waiting.state == "waiting"
        await probe.wait_for(lambda: len(probe.counted) == 1)
        assert system.statistics().cooling_down == 0

    assert probe.times(probe.activations, "x")[1] == pytest.approx(stopped_at + 60)


async def test_passivation_at_exactly_the_idle_timeout_and_reactivation(
    store: EventStore, mock_clock: trio.testing.MockClock
) -> None:
    probe = Probe(tick_delay=1000)
    async with open_actor_system(tally_factory(probe), store) as system:
        await request(store, system, "x", 1)
        await probe.wait_for(lambda: len(probe.counted) == 1)
        await system.tell("x", ARM)  # a timer in 1000 s: not activity
        await probe.wait_for(lambda: ARM in probe.messages("x"))
        await trio.testing.wait_all_tasks_blocked()
        stats = system.actor_statistics("x")
        assert stats is not None
        assert stats.state == "idle"
        assert stats.timers_pending == 1
        firings = stats.timer_firings
        idle_since = stats.idle_since
        assert idle_since is not None

        mock_clock.jump(1000)
        await probe.wait_for(lambda: TICK in probe.messages("x"))
        await trio.testing.wait_all_tasks_blocked()
        ticked = system.actor_statistics("x")
        assert ticked is not None
        assert ticked.timer_firings == firings + 1
        assert ticked.idle_since == idle_since  # the timer did not reset idleness

        mock_clock.jump(1800 - 1000 - 0.5)
        await trio.testing.wait_all_tasks_blocked()
        assert system.is_active("x")
        assert not probe.deactivations

        mock_clock.jump(0.5)
        await probe.wait_for(lambda: len(probe.deactivations) == 1)
        assert probe.deactivations[0][1] == idle_since + 1800
        await trio.testing.wait_all_tasks_blocked()
        assert not system.is_active("x")
        assert system.statistics().passivations == 1

        # The next message activates it again, folding the log where it was.
        await request(store, system, "x", 2)
        await probe.wait_for(lambda: len(probe.counted) == 2)
        stats2 = system.statistics()

    assert stats2.activations == 2
    assert len(probe.activations) == 2
    assert await counted_in_log(store, "x") == [1, 2]
    assert not probe.overlaps


async def test_a_message_during_deactivation_waits_for_it(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    probe = Probe(deactivate_delay=3)
    async with open_actor_system(
        tally_factory(probe), store, ActorSettings(idle_timeout=60)
    ) as system:
        await request(store, system, "x", 1)
        await probe.wait_for(lambda: len(probe.deactivating) == 1)
        assert not system.is_active("x")
        assert system.statistics().deactivating_actors == 1
        # While the old activation closes its socket, a message starts a new one...
        system.tell_nowait("x", WAKE)
        successor = system.actor_statistics("x")
        assert successor is not None
        assert successor.state == "waiting"
        await request(store, system, "x", 2)
        await probe.wait_for(lambda: len(probe.counted) == 2)

    # ... which folds the stream only once the old one is gone.
    assert not probe.overlaps
    closed_at = probe.deactivations[0][1]
    assert closed_at == probe.deactivating[0][1] + 3
    assert probe.activations[1][1] == closed_at


async def advance(clock: trio.testing.MockClock, seconds: float) -> None:
    """Move a manual clock once every task waits (the store is idle by then)."""
    await trio.testing.wait_all_tasks_blocked()
    clock.jump(seconds)


async def test_shutdown_finishes_the_message_in_hand_and_loses_nothing(
    store: EventStore, mock_clock: trio.testing.MockClock
) -> None:
    # A manual clock: with autojump the clock would leap to the shutdown deadline while
    # the last append is in the database, and cut it.
    probe = Probe(slow={1: 5})
    settings = ActorSettings(idle_timeout=math.inf, shutdown_timeout=10)
    async with trio.open_nursery() as driver:
        async with open_actor_system(tally_factory(probe), store, settings) as system:
            for n in (1, 2, 3):
                await request(store, system, "x", n)
            await probe.wait_for(lambda: len(probe.started) == 1)
            began = trio.current_time()
            driver.start_soon(advance, mock_clock, 5)
        ended = trio.current_time()

    assert ended == began + 5
    assert await counted_in_log(store, "x") == [1]
    assert system.statistics().interrupted_by_shutdown == 0
    assert len(probe.deactivations) == 1
    with pytest.raises(ActorSystemClosed):
        await system.tell("x", WAKE)

    # The next start picks up what was told but not handled: it is in the log.
    async with open_actor_system(tally_factory(probe), store, settings) as system:
        await system.tell("x", WAKE)
        await probe.wait_for(lambda: len(probe.counted) == 3)
    assert await counted_in_log(store, "x") == [1, 2, 3]


async def test_shutdown_cuts_a_message_that_takes_too_long(
    store: EventStore, mock_clock: trio.testing.MockClock
) -> None:
    probe = Probe(slow={1: 100})
    settings = ActorSettings(idle_timeout=math.inf, shutdown_timeout=10)
    async with (
        trio.open_nursery() as driver,
        open_actor_system(tally_factory(probe), store, settings) as system,
    ):
        await request(store, system, "x", 1)
        await probe.wait_for(lambda: len(probe.started) == 1)
        began = trio.current_time()
        driver.start_soon(advance, mock_clock, 10)
    assert trio.current_time() == began + 10
    assert system.statistics().interrupted_by_shutdown == 1
    assert len(probe.deactivations) == 1
    assert await counted_in_log(store, "x") == []

    probe.slow.clear()
    async with open_actor_system(tally_factory(probe), store, settings) as system:
        await system.tell("x", WAKE)
        await probe.wait_for(lambda: len(probe.counted) == 1)
    assert await counted_in_log(store, "x") == [1]


async def test_outer_cancellation_is_a_graceful_shutdown_not_a_crash(
    store: EventStore, mock_clock: trio.testing.MockClock
) -> None:
    probe = Probe(slow={1: 5})
    settings = ActorSettings(idle_timeout=math.inf, shutdown_timeout=10)
    async with trio.open_nursery() as driver:
        with trio.CancelScope() as outer:
            async with open_actor_system(tally_factory(probe), store, settings) as system:
                await request(store, system, "x", 1)
                await probe.wait_for(lambda: len(probe.started) == 1)
                driver.start_soon(advance, mock_clock, 5)
                outer.cancel()
                await trio.sleep_forever()
    assert outer.cancelled_caught
    assert await counted_in_log(store, "x") == [1]
    stats = system.statistics()
    assert (stats.crashes, stats.restarts, stats.interrupted_by_shutdown) == (0, 0, 0)
    assert len(probe.deactivations) == 1


async def test_an_error_in_the_block_propagates_as_raised_after_shutdown(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    probe = Probe()

    async def fail_while_running() -> None:
        async with open_actor_system(tally_factory(probe), store) as system:
            await request(store, system, "x", 1)
            await probe.wait_for(lambda: len(probe.counted) == 1)
            raise KeyError("boom")

    with pytest.raises(KeyError):  # itself, not an ExceptionGroup
        await fail_while_running()
    assert len(probe.deactivations) == 1


async def test_full_mailbox_pushes_back(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    probe = Probe(slow={1: 10})
    settings = ActorSettings(idle_timeout=math.inf, mailbox_size=3)
    async with open_actor_system(tally_factory(probe), store, settings) as system:
        await request(store, system, "x", 1)
        # Activation found the request in the log and woke itself with a timer; the
        # request's own wake-up waits in the mailbox while the first is slow.
        await probe.wait_for(lambda: len(probe.started) == 1)
        system.tell_nowait("x", ("m", 1))
        assert system.notify("x", ("m", 2))
        with pytest.raises(MailboxFull) as info:
            system.tell_nowait("x", ("m", 3))
        assert info.value.actor_id == "x"
        assert not system.notify("x", ("m", 3))
        stats = system.actor_statistics("x")
        assert stats is not None
        assert (stats.mailbox_depth, stats.mailbox_size, stats.state) == (3, 3, "handling")
        registry = system.statistics()
        assert (registry.mailbox_depth_total, registry.mailbox_depth_max) == (3, 3)

        told_at: list[float] = []

        async def tell_when_there_is_room() -> None:
            await system.tell("x", ("m", 3))
            told_at.append(trio.current_time())

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tell_when_there_is_room)
            await trio.testing.wait_all_tasks_blocked()
            waiting = system.actor_statistics("x")
            assert waiting is not None
            assert waiting.waiting_senders == 1
        await probe.wait_for(lambda: ("m", 3) in probe.messages("x"))

    assert told_at == [pytest.approx(began + 10)]
    assert probe.messages("x")[-3:] == [("m", 1), ("m", 2), ("m", 3)]


async def test_bad_actor_ids_are_refused(
    autojump_store: AutojumpStore, mock_clock: trio.testing.MockClock
) -> None:
    store = autojump_store
    async with open_actor_system(tally_factory(Probe()), store) as system:
        for bad in ("", "has space", "x" * 500):
            with pytest.raises(InvalidActorId):
                await system.tell(bad, WAKE)
        assert system.statistics().active_actors == 0


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="mailbox_size"):
        ActorSettings(mailbox_size=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        ActorSettings(idle_timeout=0)
    with pytest.raises(ValueError, match="backoff_max"):
        SupervisionPolicy(backoff_initial=5, backoff_max=1)
