"""The event store contract shared by every backend.

The log is the system's source of truth: actors fold their stream to recover state,
projections read everything in one safe order, and operators replay it to debug. Two
backends implement this contract (PostgreSQL for production and several processes,
SQLite as the embedded default) and one contract test suite runs against both.

Why the shapes below:
- `NewEvent` carries a type name and a JSON object, not a domain class, so the store never
  needs to know the event catalogue (``events.codec`` turns domain events into these).
- An event id that is already in the log makes the append a no-op that says so
  (`AppendResult.duplicate`): deterministic ids for outside facts (a Twilio MessageSid, an
  ElevenLabs conversation_id) are how duplicate webhooks are stopped across restarts.
- `expected_version` is the optimistic-concurrency guard: one writer decides per stream,
  and a conflict is a typed error the caller handles by re-reading.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol
from uuid import UUID, uuid4

import attrs

#: Pass as ``expected_version`` to append whatever the stream's version is.
ANY_VERSION: Final = None
#: The version of a stream that has no events yet.
NO_STREAM: Final = 0
#: Longest stream name the store accepts (an E.164 phone plus a category fits with room).
MAX_STREAM_NAME: Final = 200

_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]*-\S+$")


class EventStoreError(Exception):
    """Base class of every error the event store raises on purpose."""


class InvalidStreamName(EventStoreError, ValueError):
    """A stream name that is empty, too long or not `category-id`."""


class InvalidEvent(EventStoreError, ValueError):
    """An event the store cannot record (not a JSON object, bad type name, ...)."""


class WrongExpectedVersion(EventStoreError):
    """The stream moved on since the caller read it: re-read and decide again."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {actual}, the append expected {expected}"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class PartialDuplicate(EventStoreError):
    """Some, not all, of the event ids in one append are already in the log.

    A whole append is either new or a repeat; a mix means the caller built two different
    batches with overlapping ids, which is a bug to surface, not to paper over.
    """


class StoreUnavailable(EventStoreError):
    """The database cannot be reached (at start-up, or for longer than the retry budget)."""


#: One encoder for every event payload: ``json.dumps`` with options builds a new one per call.
JSON_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@attrs.frozen
class NewEvent:
    """An event about to be appended: a type name, a JSON object, and its identity."""

    type: str
    data: Mapping[str, Any]
    event_id: UUID = attrs.field(factory=uuid4)
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    #: ``data`` as compact JSON text, when whoever made the event encoded it already (the
    #: codec does, to prove it is JSON): the store then does not encode it again.
    encoded_data: str | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)


@attrs.frozen
class RecordedEvent:
    """An event as the log holds it."""

    position: int  # global, gap-tolerant, strictly increasing in the safe read order
    stream: str
    version: int  # 1 for a stream's first event
    type: str
    data: Mapping[str, Any]
    metadata: Mapping[str, Any]
    event_id: UUID
    recorded_at: datetime

    @property
    def category(self) -> str:
        return stream_category(self.stream)


@attrs.frozen
class AppendResult:
    """What an append did.

    ``version`` is the stream's version after the append; for a duplicate it is the version
    of the last of the already-recorded events, and nothing was written.
    """

    version: int
    position: int
    duplicate: bool = False


@attrs.frozen
class StoreStatistics:
    """A cheap, typed snapshot of the store's own counters (for metrics and the admin view)."""

    backend: str
    appends: int
    batches: int
    duplicates: int
    conflicts: int
    head: int


class EventStore(Protocol):
    """What every backend provides. All methods are Trio-async."""

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: int | None = ANY_VERSION,
    ) -> AppendResult:
        """Append atomically; returns only once the events are durable (committed)."""
        ...

    async def read_stream(
        self, stream: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        """The events of one stream from ``from_version`` on, in version order."""
        ...

    async def stream_version(self, stream: str) -> int:
        """The stream's current version (``NO_STREAM`` if it has no events)."""
        ...

    async def read_all(
        self, after: int = 0, limit: int = 1000, category: str | None = None
    ) -> list[RecordedEvent]:
        """Events with position > ``after`` in the safe global order.

        Safe means: once an event with position P has been returned, no event with a position
        below P can become visible later. A reader that checkpoints the last position it saw
        therefore never skips an event, however late its transaction committed.
        """
        ...

    async def head(self) -> int:
        """The highest position a reader may safely read up to right now (0 if empty)."""
        ...

    async def wait_for_events(self, after: int) -> None:
        """Return once ``head() > after``, without polling on PostgreSQL (LISTEN/NOTIFY)."""
        ...

    def statistics(self) -> StoreStatistics: ...


def validate_stream_name(stream: str) -> str:
    """Check a stream name is `category-id`; return it unchanged.

    Categories are lower-case identifiers (``phone``, ``call``, ``batch``); the id is anything
    without white space (an E.164 number, a conversation id).
    """
    if not isinstance(stream, str) or not stream:
        raise InvalidStreamName("stream name is empty")
    if len(stream) > MAX_STREAM_NAME:
        raise InvalidStreamName(
            f"stream name is {len(stream)} characters, the limit is {MAX_STREAM_NAME}"
        )
    if not _STREAM_NAME.match(stream):
        raise InvalidStreamName(
            f"stream name {stream!r} is not 'category-id' "
            "(lower-case category, a dash, an id without spaces)"
        )
    return stream


def stream_category(stream: str) -> str:
    """``phone-+15551234567`` -> ``phone``."""
    return stream.split("-", 1)[0]


def validate_new_events(stream: str, events: Sequence[NewEvent]) -> None:
    """Reject what no backend can record, before any I/O (nothing half-written)."""
    validate_stream_name(stream)
    if not events:
        raise InvalidEvent(f"append to {stream!r} has no events")
    seen: set[UUID] = set()
    for event in events:
        if not isinstance(event, NewEvent):
            raise InvalidEvent(f"append to {stream!r}: {event!r} is not a NewEvent")
        if not event.type or not event.type.isidentifier():
            raise InvalidEvent(f"event type {event.type!r} is not an identifier")
        if not isinstance(event.data, Mapping):
            raise InvalidEvent(f"event {event.type}: data must be a JSON object")
        if event.event_id in seen:
            raise InvalidEvent(f"event id {event.event_id} appears twice in one append")
        seen.add(event.event_id)


async def tail(
    store: EventStore, after: int = 0, batch: int = 1000, category: str | None = None
) -> AsyncIterator[RecordedEvent]:
    """Every event after ``after``, in the safe order, then new ones as they commit. Forever.

    The caller owns the loop; cancelling it is the way to stop.
    """
    position = after
    while True:
        events = await store.read_all(after=position, limit=batch, category=category)
        for event in events:
            yield event
        if events:
            position = events[-1].position
            # A filtered read may return fewer than asked while more is committed: read on
            # until the store has nothing past our position.
            if len(events) == batch:
                continue
        # Filtered reads skip other categories; remember how far the log itself was read.
        head = await store.head()
        if category is not None and head > position:
            # Nothing of this category up to head: everything up to head has been looked at.
            more = await store.read_all(after=position, limit=batch, category=category)
            if not more:
                position = head
            else:
                continue
        await store.wait_for_events(position)


def encode_payloads(stream: str, events: Sequence[NewEvent]) -> list[tuple[str, str]]:
    """(data, metadata) of each event as compact JSON text; a value that is not JSON is refused.

    Done in the appending task, before the event reaches a batch: a bad event fails its own
    append and nothing else, and nothing is half-written.
    """
    payloads = []
    for event in events:
        try:
            data = event.encoded_data
            if data is None:
                data = JSON_ENCODER.encode(event.data)
            metadata = JSON_ENCODER.encode(dict(event.metadata)) if event.metadata else "{}"
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(
                f"event {event.type} for {stream!r} cannot be stored as JSON: {exc}"
            ) from exc
        problem = _unstorable_text(data) or _unstorable_text(metadata)
        if problem:
            raise InvalidEvent(f"event {event.type} for {stream!r} {problem}")
        payloads.append((data, metadata))
    return payloads


def _unstorable_text(text: str) -> str | None:
    """What in this JSON text a backend cannot store (NUL, a lone surrogate), or None.

    JSON allows both; PostgreSQL's jsonb does not, and one such event would fail every
    append of its batch. Both backends refuse it here, in the appending task, so it fails
    its own append alone and the log is the same whichever backend holds it.
    ``json.dumps`` escapes both as ``\\u....``, so only text with such an escape is parsed.
    """
    if "\\u0000" not in text and "\\ud" not in text:
        return None
    found: list[str] = []

    def visit(value: Any) -> None:
        if isinstance(value, str):
            if "\x00" in value:
                found.append("contains a NUL character, which PostgreSQL's jsonb cannot store")
            else:
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    found.append("contains a lone surrogate, which is not valid Unicode")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(key)
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(json.loads(text))
    return found[0] if found else None
