"""A small event-sourced actor for the runtime's tests, built the way a phone actor is.

A "web handler" (``request``) appends ``TallyRequested(n)`` to ``tally-<id>`` and tells the
actor; the actor folds its stream, counts the first requested number not yet counted by
appending ``TallyCounted(n)`` with the version it folded, and wakes itself (a timer at 0 s)
while the log shows work left over, including right after an activation. A ``Probe``
shared with the test records what the actors did and when (trio clock), injects crashes
and slowness, and lets the test wait for a condition without sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import trio
import trio.testing

from actors import ActorContext, ActorSystem, FoldedStream
from events import (
    ANY_VERSION,
    AppendResult,
    EventStore,
    NewEvent,
    RecordedEvent,
    StoreStatistics,
    WrongExpectedVersion,
    decode,
    derived_id,
    event_type,
    to_new_event,
)
from tests.watched import Watched

WAKE = "wake"
ARM = "arm"
TICK = "tick"
START_FAILING_RESOURCE = "start-failing-resource"


@event_type
@attrs.frozen
class TallyRequested:
    n: int


@event_type
@attrs.frozen
class TallyCounted:
    n: int


class Boom(Exception):
    """The crash the probe injects."""


def tally_stream(actor_id: str) -> str:
    return f"tally-{actor_id}"


@attrs.define(eq=False)
class Probe(Watched):
    """What the actors did, and what they should do wrong (tests `wait_for` what they did:
    every actor records through `changed`)."""

    activations: list[tuple[str, float]] = attrs.Factory(list)
    deactivations: list[tuple[str, float]] = attrs.Factory(list)
    deactivating: list[tuple[str, float]] = attrs.Factory(list)
    handled: list[tuple[str, Any, float]] = attrs.Factory(list)
    started: list[tuple[str, int, float]] = attrs.Factory(list)
    counted: list[tuple[str, int, float]] = attrs.Factory(list)
    crashes: list[tuple[str, int, float]] = attrs.Factory(list)
    #: Ids activated while an earlier activation of the same id was still live.
    overlaps: list[str] = attrs.Factory(list)
    live: set[str] = attrs.Factory(set)
    #: (id, n) -> crashes left before appending TallyCounted(n); math.inf crashes forever.
    crash_before: dict[tuple[str, int], float] = attrs.Factory(dict)
    #: (id, n) -> crashes left just after appending TallyCounted(n).
    crash_after: dict[tuple[str, int], float] = attrs.Factory(dict)
    #: n -> seconds the handler takes before appending TallyCounted(n) (the first time).
    slow: dict[int, float] = attrs.Factory(dict)
    deactivate_delay: float = 0.0
    tick_delay: float = 1000.0

    def take_crash(self, plan: dict[tuple[str, int], float], actor_id: str, n: int) -> bool:
        left = plan.get((actor_id, n), 0)
        if left <= 0:
            return False
        plan[(actor_id, n)] = left - 1
        return True

    def times(self, records: list[tuple[str, float]], actor_id: str) -> list[float]:
        return [t for a, t in records if a == actor_id]

    def messages(self, actor_id: str) -> list[Any]:
        return [m for a, m, _ in self.handled if a == actor_id]


@attrs.define(eq=False)
class TallyActor:
    actor_id: str
    probe: Probe
    stream: FoldedStream | None = None
    requested: list[int] = attrs.Factory(list)
    counted: set[int] = attrs.Factory(set)

    async def activate(self, ctx: ActorContext[Any]) -> None:
        probe = self.probe
        if self.actor_id in probe.live:
            probe.overlaps.append(self.actor_id)
        probe.live.add(self.actor_id)
        probe.activations.append((self.actor_id, ctx.now()))
        probe.changed()
        self.stream = FoldedStream(ctx.store, tally_stream(self.actor_id))
        await self._catch_up()
        if self._pending():
            # Work left by the previous activation: its wake-up message may be gone.
            ctx.set_timer("resume", 0, WAKE)

    async def handle(self, message: Any, ctx: ActorContext[Any]) -> None:
        self.probe.handled.append((self.actor_id, message, ctx.now()))
        self.probe.changed()
        if message == ARM:
            ctx.set_timer("tick", self.probe.tick_delay, TICK)
        elif message == START_FAILING_RESOURCE:
            ctx.nursery.start_soon(self._failing_resource)
        elif message == WAKE:
            await self._count(ctx)

    async def deactivate(self, ctx: ActorContext[Any]) -> None:
        probe = self.probe
        probe.deactivating.append((self.actor_id, ctx.now()))
        probe.changed()
        if probe.deactivate_delay:
            await trio.sleep(probe.deactivate_delay)
        probe.live.discard(self.actor_id)
        probe.deactivations.append((self.actor_id, ctx.now()))
        probe.changed()

    async def _failing_resource(self) -> None:
        await trio.sleep(1)
        raise Boom("the resource failed")

    async def _catch_up(self) -> None:
        assert self.stream is not None
        for recorded in await self.stream.read_new():
            event = decode(recorded)
            if isinstance(event, TallyRequested):
                self.requested.append(event.n)
            elif isinstance(event, TallyCounted):
                self.counted.add(event.n)

    def _pending(self) -> list[int]:
        return [n for n in self.requested if n not in self.counted]

    async def _count(self, ctx: ActorContext[Any]) -> None:
        """One step per message: count the first pending number, then wake again if more.

        Small steps are what make shutdown meaningful: the message in hand finishes, the
        rest stays in the log for the next start.
        """
        assert self.stream is not None
        probe = self.probe
        while True:
            await self._catch_up()
            pending = self._pending()
            if not pending:
                return
            n = pending[0]
            probe.started.append((self.actor_id, n, ctx.now()))
            probe.changed()
            if n in probe.slow:
                await trio.sleep(probe.slow.pop(n))
            if probe.take_crash(probe.crash_before, self.actor_id, n):
                self._crashed(n, ctx)
            try:
                await self.stream.append([to_new_event(TallyCounted(n))])
            except WrongExpectedVersion:
                continue  # a request came in since we read: fold it and decide again
            self.counted.add(n)
            probe.counted.append((self.actor_id, n, ctx.now()))
            probe.changed()
            if probe.take_crash(probe.crash_after, self.actor_id, n):
                self._crashed(n, ctx)
            if self._pending():
                ctx.set_timer("resume", 0, WAKE)
            return

    def _crashed(self, n: int, ctx: ActorContext[Any]) -> None:
        self.probe.crashes.append((self.actor_id, n, ctx.now()))
        self.probe.changed()
        raise Boom(f"tally {n} of {self.actor_id} failed")


def tally_factory(probe: Probe) -> Callable[[str], TallyActor]:
    def make(actor_id: str) -> TallyActor:
        return TallyActor(actor_id, probe)

    return make


async def request(store: EventStore, system: ActorSystem[Any], actor_id: str, n: int) -> None:
    """What a web handler does: record the fact (idempotently), then wake the actor."""
    event = to_new_event(TallyRequested(n), event_id=derived_id("tally", actor_id, str(n)))
    await store.append(tally_stream(actor_id), [event])
    await system.tell(actor_id, WAKE)


async def counted_in_log(store: EventStore, actor_id: str) -> list[int]:
    return [
        event.n
        for event in map(decode, await store.read_stream(tally_stream(actor_id)))
        if isinstance(event, TallyCounted)
    ]


FOREVER = math.inf


@attrs.define(eq=False)
class AutojumpStore:
    """The real store for tests on an autojump clock: the clock holds still during a call.

    An autojump clock leaps to the next deadline whenever every task waits, and a task
    waiting for SQLite's thread or PostgreSQL's socket counts as waiting: a 60 s cool-down
    or a shutdown deadline would pass in the middle of an append. While any call is in the
    database this turns autojump off, so virtual time only passes while the system is
    really idle. (It wraps, it does not imitate: every call reaches the real store.)
    """

    inner: EventStore
    clock: trio.testing.MockClock
    _busy: int = 0

    def __attrs_post_init__(self) -> None:
        self.clock.autojump_threshold = 0

    def stop_jumping(self) -> None:
        self.clock.autojump_threshold = math.inf

    @contextmanager
    def _hold_the_clock(self) -> Iterator[None]:
        self._busy += 1
        self.clock.autojump_threshold = math.inf
        try:
            yield
        finally:
            self._busy -= 1
            if not self._busy:
                self.clock.autojump_threshold = 0

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int | None = ANY_VERSION
    ) -> AppendResult:
        with self._hold_the_clock():
            return await self.inner.append(stream, events, expected_version)

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        with self._hold_the_clock():
            return await self.inner.read_stream(stream, from_version, limit)

    async def stream_version(self, stream: str) -> int:
        with self._hold_the_clock():
            return await self.inner.stream_version(stream)

    async def read_all(
        self, after: int = 0, limit: int = 1000, category: str | None = None
    ) -> list[RecordedEvent]:
        with self._hold_the_clock():
            return await self.inner.read_all(after, limit, category)

    async def head(self) -> int:
        with self._hold_the_clock():
            return await self.inner.head()

    async def wait_for_events(self, after: int) -> None:
        await self.inner.wait_for_events(after)  # a wait for others, not work of its own

    def statistics(self) -> StoreStatistics:
        return self.inner.statistics()
