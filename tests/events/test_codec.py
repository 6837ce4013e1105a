"""Domain events <-> JSON: exact round trips and errors that name the type and the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest

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
from events.store import RecordedEvent


@attrs.frozen
class Turn:
    role: str
    text: str


@event_type
@attrs.frozen
class SampleHappened:
    phone: str
    count: int
    at: datetime
    turns: tuple[Turn, ...] = ()
    note: str | None = None


@attrs.frozen
class NotRegistered:
    x: int


def test_round_trip_is_exact() -> None:
    at = datetime(2026, 11, 25, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    event = SampleHappened("+15551234567", 3, at, (Turn("agent", "hi"), Turn("user", "yo")))
    new = to_new_event(event, metadata={"correlation_id": "c1"})
    assert new.type == "SampleHappened"
    assert new.data["at"] == at.isoformat()
    assert from_data(new.type, new.data) == event
    recorded = RecordedEvent(1, "phone-+1", 1, new.type, new.data, {}, new.event_id, at)
    assert decode(recorded) == event


def test_unknown_type_is_named() -> None:
    with pytest.raises(UnknownEventType, match="'NoSuchThing'"):
        from_data("NoSuchThing", {})


def test_missing_and_wrong_fields_are_named() -> None:
    with pytest.raises(MalformedEvent) as info:
        from_data("SampleHappened", {"phone": "+1", "at": "2026-01-01T00:00:00+00:00"})
    assert "SampleHappened" in str(info.value)
    assert "count" in str(info.value)
    with pytest.raises(MalformedEvent, match="count"):
        from_data(
            "SampleHappened",
            {"phone": "+1", "count": "many", "at": "2026-01-01T00:00:00+00:00"},
        )


def test_naive_times_are_refused() -> None:
    with pytest.raises(MalformedEvent, match="at"):
        from_data("SampleHappened", {"phone": "+1", "count": 1, "at": "2026-01-01T00:00:00"})


def test_unregistered_class_cannot_be_encoded() -> None:
    with pytest.raises(UnencodableEvent, match="NotRegistered"):
        to_data(NotRegistered(1))


def test_a_value_that_is_not_json_is_refused_when_the_event_is_made() -> None:
    from events.conversation import AgentAnswered

    answer = AgentAnswered("t1", "hi", float("nan"), datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(UnencodableEvent, match="AgentAnswered"):
        to_new_event(answer)


def test_the_new_event_carries_its_json_text_for_the_store() -> None:
    import json

    from events.store import encode_payloads

    event = to_new_event(SampleHappened("+1", 2, datetime(2026, 1, 1, tzinfo=UTC)))
    assert event.encoded_data is not None
    assert json.loads(event.encoded_data) == event.data
    [(data, _)] = encode_payloads("sample-1", [event])
    assert data == event.encoded_data
    # A NewEvent made by hand is encoded by the store itself, to the same text.
    [(by_hand, _)] = encode_payloads("sample-1", [attrs.evolve(event, encoded_data=None)])
    assert by_hand == data


def test_registering_a_non_attrs_class_fails() -> None:
    class Plain:
        pass

    with pytest.raises(TypeError, match="attrs"):
        event_type(Plain)


def test_derived_ids_are_stable_and_distinct() -> None:
    assert derived_id("twilio-message", "SM1") == derived_id("twilio-message", "SM1")
    assert derived_id("twilio-message", "SM1") != derived_id("twilio-message", "SM2")
    assert derived_id("call", "SM1") != derived_id("twilio-message", "SM1")


def test_now_round_trips() -> None:
    event = SampleHappened("+1", 1, datetime.now(UTC))
    assert from_data("SampleHappened", to_data(event)) == event
