"""An actor's own stream and how far the actor has folded it.

The pattern every actor here follows: web handlers append facts to the actor's stream and
tell it; the actor reads what is new since the version it last folded, folds it, decides,
and appends its decisions with that version as the expected version. If a fact slipped in
between, the append fails with ``WrongExpectedVersion`` and the actor reads again and
decides again: it is the one decider on its stream, but not the only writer of facts.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from events.store import NO_STREAM, AppendResult, EventStore, NewEvent, RecordedEvent


@attrs.define(eq=False)
class FoldedStream:
    """A stream plus the version its reader has folded up to.

    ``version`` moves only forward, by ``read_new`` (events the caller must fold) and by a
    successful ``append`` (events the caller already holds and folds itself).
    """

    store: EventStore
    name: str
    version: int = NO_STREAM

    async def read_new(self, limit: int | None = None) -> list[RecordedEvent]:
        """Events after ``version`` (all of them, or the first ``limit``), in order."""
        events = await self.store.read_stream(self.name, from_version=self.version + 1, limit=limit)
        if events:
            self.version = events[-1].version
        return events

    async def append(self, events: Sequence[NewEvent]) -> AppendResult:
        """Append expecting the stream to be at ``version``; raises ``WrongExpectedVersion``
        if something was appended since the last read.

        A duplicate (the same event ids already in the log) leaves ``version`` alone: the
        events are somewhere in the stream already, and ``read_new`` will bring them.
        """
        result = await self.store.append(self.name, events, expected_version=self.version)
        if not result.duplicate:
            self.version = result.version
        return result
