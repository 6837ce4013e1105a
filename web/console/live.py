"""Live updates for open conversation pages: one reader of the log's tail per process.

Every open conversation page holds a Server-Sent Events stream. Rather than each stream
reading the log, one task (`LiveTail`) follows the log's tail (``wait_for_events``:
LISTEN/NOTIFY on PostgreSQL, so nothing polls) and wakes the subscriptions of the phones
its new events are about, handing them the events. Each stream then sends two things:
at once, each new message rendered from its event (the log is the truth, and a message
shows within milliseconds of being recorded, however busy the projections are); then,
once the read models have folded what woke it, the page's whole live part rendered again
from them (statuses, timings, notes, state). A burst of events for one phone wakes its
page once.

The task runs only while somebody is watching: it starts with the first subscription and
is cancelled with the last, so a console nobody has open costs the log nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from events.store import EventStore, RecordedEvent
from projections.conversations import CONVERSATIONS_PROJECTION

logger = logging.getLogger(__name__)

#: Events one read of the tail takes at most.
TAIL_PAGE = 1000
#: Pause before reading again after the log failed to answer.
RETRY_SECONDS = 1.0
#: Events a subscription keeps between two renders of its page.
MAX_HELD = 50


def subject_phone(event: RecordedEvent) -> str | None:
    """The phone whose page an event changes: the conversation the conversations
    projection files it under (its phone or delivery stream, or the actor a supervisor
    stopped)."""
    return CONVERSATIONS_PROJECTION.subject(event)


@attrs.define(eq=False)
class Subscription:
    """One open page's interest in one phone."""

    phone: str
    #: The highest position of an event for this phone not yet rendered (0: none).
    pending: int = 0
    #: The events that moved it, kept for pages that show a new message straight from
    #: the log (at most `MAX_HELD`: a page far behind renders everything again anyway).
    held: list[RecordedEvent] = attrs.field(factory=list)
    _woken: trio.Event = attrs.field(factory=trio.Event)

    def tell(self, event: RecordedEvent) -> None:
        if event.position > self.pending:
            self.pending = event.position
            if len(self.held) < MAX_HELD:
                self.held.append(event)
            self._woken.set()

    async def wait(self) -> None:
        """Until something came (at once if it has already)."""
        await self._woken.wait()

    def take(self) -> tuple[int, list[RecordedEvent]] | None:
        """The position to render up to and the events that came, if any came."""
        if not self._woken.is_set():
            return None
        self._woken = trio.Event()
        position, self.pending = self.pending, 0
        held, self.held = self.held, []
        return position, held

    async def next(self, seconds: float) -> tuple[int, list[RecordedEvent]] | None:
        """What `take` gives once something came, or None after ``seconds`` of nothing."""
        with trio.move_on_after(seconds):
            await self.wait()
        return self.take()


@attrs.define(eq=False)
class LiveTail:
    store: EventStore
    _by_phone: dict[str, set[Subscription]] = attrs.field(factory=dict)
    _scope: trio.CancelScope | None = None
    #: Events the tail has read, for tests and the benchmark.
    events_read: int = 0

    @asynccontextmanager
    async def subscribe(self, phone: str, nursery: trio.Nursery) -> AsyncIterator[Subscription]:
        """Watch ``phone`` until the block ends; the tail runs in ``nursery`` meanwhile."""
        subscription = Subscription(phone)
        self._by_phone.setdefault(phone, set()).add(subscription)
        if self._scope is None:
            self._scope = trio.CancelScope()
            nursery.start_soon(self._follow, self._scope)
        try:
            yield subscription
        finally:
            watchers = self._by_phone.get(phone)
            if watchers is not None:
                watchers.discard(subscription)
                if not watchers:
                    del self._by_phone[phone]
            if not self._by_phone and self._scope is not None:
                self._scope.cancel()
                self._scope = None

    @property
    def watched(self) -> int:
        return sum(len(s) for s in self._by_phone.values())

    async def _follow(self, scope: trio.CancelScope) -> None:
        # It runs in the app's own nursery: an error escaping it would stop the server.
        # The log being away is waited out (pages keep their last render meanwhile).
        with scope:
            position: int | None = None
            while True:
                try:
                    if position is None:
                        # From the head as the first page subscribed: each page renders
                        # once on connecting, covering what came before (views).
                        position = await self.store.head()
                    position = await self._read_on(position)
                except Exception as exc:
                    logger.warning("console live updates: reading the log failed (%s)", exc)
                    await trio.sleep(RETRY_SECONDS)

    async def _read_on(self, position: int) -> int:
        events = await self.store.read_all(after=position, limit=TAIL_PAGE)
        if not events:
            await self.store.wait_for_events(position)
            return position
        self.events_read += len(events)
        for event in events:
            phone = subject_phone(event)
            if phone is None:
                continue
            for subscription in self._by_phone.get(phone, ()):
                subscription.tell(event)
        return events[-1].position
