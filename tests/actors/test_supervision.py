"""The restart rules as plain functions: no clock, no tasks."""

from __future__ import annotations

import random

import pytest

from actors import (
    MAX_ACTOR_ID,
    InvalidActorId,
    Restart,
    Stop,
    SupervisionPolicy,
    decide_after_crash,
    describe_failure,
    validate_actor_id,
)
from events import decode, to_new_event
from events.store import RecordedEvent, validate_stream_name
from events.supervision import ActorStopped, supervision_stream

EXACT = SupervisionPolicy(
    max_restarts=5, within_seconds=30, backoff_initial=0.1, backoff_max=1, jitter=0
)


def test_restarts_until_the_limit_then_stops() -> None:
    rng = random.Random(0)
    history: tuple[float, ...] = ()
    now = 100.0
    delays = []
    for _ in range(5):
        decision = decide_after_crash(EXACT, history, now, rng)
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
        history = decision.history
        now += decision.delay + 0.01
    assert delays == [0.1, 0.2, 0.4, 0.8, 1]
    assert decide_after_crash(EXACT, history, now, rng) == Stop(restarts=5)


def test_only_restarts_inside_the_window_count() -> None:
    rng = random.Random(0)
    history = (0.0, 1.0, 2.0, 3.0, 40.0)
    decision = decide_after_crash(EXACT, history, 41.0, rng)
    # Four restarts fell out of the 30 s window: the backoff starts over too.
    assert decision == Restart(delay=0.2, history=(40.0, 41.0))


def test_zero_restarts_stops_at_the_first_crash() -> None:
    policy = SupervisionPolicy(max_restarts=0)
    assert decide_after_crash(policy, (), 0.0, random.Random()) == Stop(restarts=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_restarts": -1},
        {"within_seconds": 0},
        {"backoff_initial": -0.1},
        {"jitter": 1.5},
        {"cooldown_seconds": -1},
        {"backoff_initial": 5, "backoff_max": 1},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be|is below"):
        SupervisionPolicy(**kwargs)  # type: ignore[arg-type]


def test_failures_are_described_without_their_group_and_short() -> None:
    assert describe_failure(ExceptionGroup("x", [KeyError("k")])) == ("KeyError", "'k'")
    error_type, message = describe_failure(ValueError("x" * 1000))
    assert error_type == "ValueError"
    assert len(message) == 300
    assert describe_failure(InvalidActorId("no")) == ("actors.runtime.InvalidActorId", "no")


def test_actor_ids_name_a_valid_supervision_stream() -> None:
    longest = "+" + "1" * (MAX_ACTOR_ID - 1)
    assert validate_stream_name(supervision_stream(validate_actor_id(longest)))
    for bad in ("", "a b", "x" * (MAX_ACTOR_ID + 1), "tab\there"):
        with pytest.raises(InvalidActorId):
            validate_actor_id(bad)


def test_actor_stopped_round_trips_through_the_codec() -> None:
    from datetime import UTC, datetime
    from uuid import uuid4

    event = ActorStopped(
        actor_id="+15551234567",
        error_type="ValueError",
        error_message="bad",
        restarts=5,
        cooldown_seconds=60.0,
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    new = to_new_event(event)
    recorded = RecordedEvent(
        position=1,
        stream=supervision_stream(event.actor_id),
        version=1,
        type=new.type,
        data=new.data,
        metadata={},
        event_id=uuid4(),
        recorded_at=event.at,
    )
    assert decode(recorded) == event
    assert recorded.category == "supervision"
