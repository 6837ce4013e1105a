"""Domain events <-> JSON, with one cattrs converter.

Every event class is a frozen attrs class registered under its class name with
``@event_type``. The store only sees ``NewEvent(type, data)``; this module is where a type
name becomes a class again, and where a payload that does not fit its class is reported
with the type and the field that is wrong (never a bare ``KeyError`` from deep inside cattrs).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from events.store import JSON_ENCODER, InvalidEvent, NewEvent, RecordedEvent

E = TypeVar("E")

#: Namespace for deterministic event ids derived from outside facts.
AFTERCALL_NAMESPACE = uuid.UUID("5b3f1c2e-7a4d-4c1e-9f1b-2a6d3e8c9b70")

_converter = make_converter()
_registry: dict[str, type[Any]] = {}


class UnknownEventType(InvalidEvent):
    """A recorded or submitted event whose type is not in the catalogue."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"unknown event type {type_name!r}")
        self.type_name = type_name


class MalformedEvent(InvalidEvent):
    """A payload that does not fit its event class; names the type and the fields."""

    def __init__(self, type_name: str, problems: list[str]) -> None:
        super().__init__(f"malformed {type_name} event: {'; '.join(problems)}")
        self.type_name = type_name
        self.problems = problems


class UnencodableEvent(InvalidEvent):
    """An object that cannot be turned into an event payload."""


def event_type(cls: type[E]) -> type[E]:
    """Register a frozen attrs class as an event type, named by its class name."""
    name = cls.__name__
    if not attrs.has(cls):
        raise TypeError(f"{name} must be an attrs class to be an event type")
    if name in _registry and _registry[name] is not cls:
        raise TypeError(f"event type {name!r} is registered twice")
    _registry[name] = cls
    return cls  # type: ignore[return-value]  # attrs.has narrows the type needlessly


def registered_types() -> Mapping[str, type[Any]]:
    return dict(_registry)


def type_name(event: object) -> str:
    name = type(event).__name__
    if _registry.get(name) is not type(event):
        raise UnencodableEvent(f"{name} is not a registered event type")
    return name


def to_data(event: object) -> dict[str, Any]:
    """The JSON object for an event instance."""
    return _encoded(event)[0]


def _encoded(event: object) -> tuple[dict[str, Any], str]:
    """The event's JSON object and its compact JSON text.

    Encoding the text proves the object is JSON now, not at the database: nothing
    half-written later. The object is plain data by then, so the plain encoder does it
    (the converter's own ``dumps`` would walk it through cattrs a second time).
    """
    name = type_name(event)
    try:
        data = _converter.unstructure(event)
    except Exception as exc:  # cattrs raises many kinds; the caller needs one
        raise UnencodableEvent(f"cannot encode {name}: {exc}") from exc
    if not isinstance(data, dict):
        raise UnencodableEvent(f"{name} did not encode to a JSON object")
    try:
        text = JSON_ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise UnencodableEvent(f"cannot encode {name}: {exc}") from exc
    return data, text


def to_new_event(
    event: object,
    *,
    event_id: UUID | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> NewEvent:
    """Wrap a domain event for the store (a random id unless the caller derives one)."""
    data, text = _encoded(event)
    return NewEvent(
        type=type_name(event),
        data=data,
        event_id=event_id if event_id is not None else uuid.uuid4(),
        metadata=dict(metadata or {}),
        encoded_data=text,
    )


def from_data(type_name_: str, data: Mapping[str, Any]) -> Any:
    """Rebuild a domain event from its type name and JSON object."""
    cls = _registry.get(type_name_)
    if cls is None:
        raise UnknownEventType(type_name_)
    try:
        return _converter.structure(dict(data), cls)
    except cattrs.ClassValidationError as exc:
        raise MalformedEvent(type_name_, cattrs.transform_error(exc, path=type_name_)) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedEvent(type_name_, [repr(exc)]) from exc


def decode(recorded: RecordedEvent) -> Any:
    """The domain event held by a recorded event."""
    return from_data(recorded.type, recorded.data)


def derived_id(kind: str, *parts: str) -> UUID:
    """A deterministic event id for an outside fact, e.g. ``derived_id("twilio-message", sid)``.

    The same fact always gets the same id, so recording it twice is a no-op in the store.
    """
    return uuid.uuid5(AFTERCALL_NAMESPACE, "/".join((kind, *parts)))


def dumps(value: Any) -> str:
    """JSON text using the same converter (datetimes as ISO 8601)."""
    return _converter.dumps(value)


def register_hooks(register: Callable[[cattrs.Converter], None]) -> None:
    """Let an event module add structure/unstructure hooks for its own value types."""
    register(_converter)


# datetimes round-trip as ISO 8601 strings with their offset (the preconf converter does this);
# make sure naive datetimes are refused: an event's time must say its zone.
def _structure_datetime(value: Any, _: type[datetime]) -> datetime:
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(parsed, datetime) or parsed.tzinfo is None:
        raise ValueError(f"{value!r} is not an ISO 8601 time with a zone")
    return parsed


_converter.register_structure_hook(datetime, _structure_datetime)
