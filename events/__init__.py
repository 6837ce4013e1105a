"""The event log: the system's source of truth.

Event types are frozen attrs classes registered with ``event_type``; ``to_new_event`` and
``decode`` turn them into store records and back. The store
(``aftercall.storage.open_store`` picks the backend) appends with an expected version, reads
streams, reads everything in a safe order, and wakes tailing readers. See ``events.store``
for the contract both backends keep.
"""

from events.codec import (
    MalformedEvent,
    UnencodableEvent,
    UnknownEventType,
    decode,
    derived_id,
    event_type,
    from_data,
    to_data,
    to_new_event,
)
from events.store import (
    ANY_VERSION,
    NO_STREAM,
    AppendResult,
    EventStore,
    EventStoreError,
    InvalidEvent,
    InvalidStreamName,
    NewEvent,
    PartialDuplicate,
    RecordedEvent,
    StoreStatistics,
    StoreUnavailable,
    WrongExpectedVersion,
    stream_category,
    tail,
    validate_stream_name,
)

__all__ = [
    "ANY_VERSION",
    "NO_STREAM",
    "AppendResult",
    "EventStore",
    "EventStoreError",
    "InvalidEvent",
    "InvalidStreamName",
    "MalformedEvent",
    "NewEvent",
    "PartialDuplicate",
    "RecordedEvent",
    "StoreStatistics",
    "StoreUnavailable",
    "UnencodableEvent",
    "UnknownEventType",
    "WrongExpectedVersion",
    "decode",
    "derived_id",
    "event_type",
    "from_data",
    "stream_category",
    "tail",
    "to_data",
    "to_new_event",
    "validate_stream_name",
]
