"""Another writer's decision in a phone's stream is an expected outcome, not a crash.

Two Hypercorn workers on one database each run an actor for a phone until phones get a
single owner; the second to record a decision finds the first's in the log
(``followup.phone.DecisionConflict``). Here the other writer is the test, appending the
question to the agent that a second worker would have recorded, while this process's
actor waits for the agent's answer to the same message.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from events.codec import to_new_event
from events.conversation import AgentAsked, phone_stream
from events.store import EventStore
from sandbox.elevenlabs import Faults
from tests.e2e.harness import of_type, running_aftercall

ANA = "+15551230001"


async def test_a_decision_conflict_is_counted_and_the_message_answered_once(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_aftercall(store) as ac:
        await ac.complete_call(ANA)
        await ac.wait_for(of_type("ReplySent", ANA))
        await ac.wait_for(of_type("AgentSessionOpened", ANA))
        # Slow enough that the actor records its question on its own, after ours.
        ac.elevenlabs.set_faults(Faults(reply_delay_seconds=2.0))
        await ac.twilio.user_says(ANA, "did the refund go out?")
        [received] = await ac.wait_for(of_type("MessageReceived", ANA))
        stream = await store.read_stream(phone_stream(ANA))
        sid = received.data["message_sid"]
        other = AgentAsked(
            turn_id="turn-of-the-other-worker",
            message_sids=(sid,),
            text="did the refund go out?",
            asked_at=datetime.now(UTC),
        )
        await store.append(
            phone_stream(ANA), [to_new_event(other)], expected_version=stream[-1].version
        )
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        assert ac.system.conflicts.decision_conflicts == 1
        statistics = ac.system.phones.statistics()

    events = await store.read_stream(phone_stream(ANA))
    answers = [e for e in events if e.type == "ReplyRequested" and sid in e.data["in_reply_to"]]
    # One answer, to the turn the other writer recorded: this actor's own was dropped.
    assert [a.data["turn_id"] for a in answers] == ["turn-of-the-other-worker"]
    assert len(ac.twilio.received(ANA)) == 2
    assert statistics.restarts == 0
    conflict_lines = [r for r in caplog.records if "deciding again from the log" in r.message]
    assert len(conflict_lines) == 1
    assert conflict_lines[0].levelno == logging.INFO
    assert conflict_lines[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
