"""The projections' rules on values: no database, events built from the real classes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.calls import CallCompleted, CallFailed
from events.codec import from_data, to_data, to_new_event
from events.conversation import (
    AgentAnswered,
    AgentAsked,
    AgentSessionOpened,
    AgentTurnFailed,
    DeliveryStatusChanged,
    MessageReceived,
    ReplyFailed,
    ReplyRequested,
    ReplySent,
    Template,
    phone_stream,
)
from events.store import RecordedEvent
from events.supervision import ActorStopped, supervision_stream
from projections.conversations import CONVERSATIONS_PROJECTION, effective_state
from projections.history import HISTORY
from projections.metrics import METRICS
from projections.model import Projection, RowSet, Table, columns, fold_page
from projections.queries import percentile
from projections.rules import hour_of, phone_of, time_of
from tests.projections.workload import interleaved

ANA = "+15551230001"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def records(*events: Any, phone: str = ANA) -> list[RecordedEvent]:
    out = []
    for position, event in enumerate(events, start=1):
        stream = (
            supervision_stream(phone) if isinstance(event, ActorStopped) else phone_stream(phone)
        )
        new = to_new_event(event)
        out.append(
            RecordedEvent(
                position,
                stream,
                position,
                new.type,
                json.loads(json.dumps(new.data)),
                {},
                uuid.uuid4(),
                at(position),
            )
        )
    return out


def fold(projection: Projection, *events: Any) -> RowSet:
    return fold_page(projection, {}, projection.plan(records(*events)))


def row(rows: RowSet, table: str, *key: str) -> dict[str, Any]:
    found = rows.get(table, *key)
    assert found is not None, f"no {table} row {key}"
    return found


CALL = CallCompleted("conv_1", "agent_1", ANA, "summary")
FIRST = ReplyRequested("r1", "first_message", ("Hi Ana",), at(1), call_conversation_id="conv_1")
FIRST_SENT = ReplySent("r1", 0, "SM1", "queued", at(2), send_started_at=at(1.5))
HELLO = MessageReceived("SM2", ANA, "hello", at(10))
ASKED = AgentAsked("t1", ("SM2",), "hello", at(11))
ANSWER = AgentAnswered("t1", "hi there", 1.25, at(12.5))
REPLY = ReplyRequested("r2", "agent", ("hi", "there"), at(12.6), in_reply_to=("SM2",), turn_id="t1")
REPLY_SENT = (
    ReplySent("r2", 0, "SM3", "queued", at(13.1), send_started_at=at(13)),
    ReplySent("r2", 1, "SM4", "queued", at(13.3), send_started_at=at(13.2)),
)


def test_the_fast_workload_encoding_is_the_codecs() -> None:
    for append in interleaved(1, 30):
        for event in append.events:
            if event.type == "BatchPolled":
                continue
            data = json.loads(json.dumps(event.data))
            assert json.loads(json.dumps(to_data(from_data(event.type, data)))) == data


def test_history_keeps_each_message_with_its_status_and_call() -> None:
    rows = fold(
        HISTORY,
        CALL,
        FIRST,
        DeliveryStatusChanged("SM1", "delivered", at(3)),  # beats ReplySent to the log
        FIRST_SENT,
        DeliveryStatusChanged("SM1", "sent", at(4)),  # late, and lower: ignored
        DeliveryStatusChanged("SM1", "read", at(5)),
        HELLO,
        REPLY,
        REPLY_SENT[0],
        ReplyFailed("r2", 1, 63016, 400, "outside the window", at(14)),
    )
    first = row(rows, "message_history", "SM1")
    assert (first["direction"], first["status"], first["body"]) == ("outbound", "read", "Hi Ana")
    assert (first["delivered_at"], first["read_at"]) == (at(3), at(5))
    assert first["call_conversation_id"] == "conv_1"
    assert rows.get("message_history", "r1/0") is None  # moved to its MessageSid
    inbound = row(rows, "message_history", "SM2")
    assert (inbound["direction"], inbound["status"], inbound["body"]) == (
        "inbound",
        "received",
        "hello",
    )
    assert inbound["call_conversation_id"] == "conv_1"
    assert row(rows, "message_history", "SM3")["in_reply_to"] == "SM2"
    failed = row(rows, "message_history", "r2/1")
    assert (failed["status"], failed["error_code"], failed["body"]) == ("failed", 63016, "there")


def test_a_template_is_one_message() -> None:
    template = ReplyRequested(
        "r1", "first_message", (), at(1), template=Template("HX" + "a" * 32, {"1": "Ana"})
    )
    rows = fold(HISTORY, CALL, template)
    assert row(rows, "message_history", "r1/0")["body"].startswith("[template HX")


def test_conversation_states_follow_the_work_in_hand() -> None:
    def state(*events: Any) -> str:
        return str(row(fold(CONVERSATIONS_PROJECTION, *events), "conversations", ANA)["state"])

    assert state(CALL) == "active"  # first message due
    assert state(CALL, FIRST) == "active"  # not settled with Twilio yet
    assert state(CALL, FIRST, FIRST_SENT) == "waiting"
    assert state(CALL, FIRST, FIRST_SENT, HELLO) == "active"
    assert state(CALL, FIRST, FIRST_SENT, HELLO, ASKED, ANSWER, REPLY, *REPLY_SENT) == "waiting"
    refused = ReplyFailed("r1", 0, 63007, 400, "no channel", at(2))
    assert state(CALL, FIRST, refused) == "failed"
    undelivered = DeliveryStatusChanged("SM1", "failed", at(3), 63016, "outside window")
    assert state(CALL, FIRST, FIRST_SENT, undelivered) == "failed"
    late = DeliveryStatusChanged("SM1", "failed", at(20), 63016, "outside window")
    assert state(CALL, FIRST, FIRST_SENT, HELLO, ASKED, ANSWER, REPLY, *REPLY_SENT, late) == (
        "waiting"  # about an older message: the conversation went on
    )
    stopped = ActorStopped(ANA, "RuntimeError", "boom", 5, 60.0, at(20))
    assert state(CALL, FIRST, FIRST_SENT, HELLO, stopped) == "failed"
    assert state(CALL, FIRST, FIRST_SENT, HELLO, stopped, ASKED) == "active"
    assert state(CallFailed("conv_1", "agent_1", ANA, "no-answer")) == "failed"


def test_a_conversation_row_has_windows_counts_and_the_last_error() -> None:
    turn_failed = AgentTurnFailed("t1", "timeout", "no answer in 30 s", at(40))
    rows = fold(CONVERSATIONS_PROJECTION, CALL, FIRST, FIRST_SENT, HELLO, ASKED, turn_failed)
    conversation = row(rows, "conversations", ANA)
    assert conversation["window_ends_at"] == at(10) + timedelta(hours=24)
    assert conversation["last_inbound_text"] == "hello"
    assert conversation["last_outbound_text"] == "Hi Ana"
    assert (conversation["messages_in"], conversation["messages_out"]) == (1, 1)
    assert conversation["fallbacks"] == 1
    assert conversation["last_error"] == "agent timeout: no answer in 30 s"


def test_idle_is_waiting_with_nothing_for_a_day() -> None:
    assert effective_state("waiting", at(0), at(3600)) == "waiting"
    assert effective_state("waiting", at(0), at(24 * 3600)) == "idle"
    assert effective_state("active", at(0), at(48 * 3600)) == "active"


def test_added_latency_is_the_time_to_send_minus_the_agents() -> None:
    rows = fold(METRICS, CALL, FIRST, FIRST_SENT, HELLO, ASKED, ANSWER, REPLY, *REPLY_SENT)
    reply = row(rows, "metric_replies", "r2")
    # first part started 3 s after the message; the agent took 1.25 s of it
    assert reply["total_seconds"] == pytest.approx(3.0)
    assert reply["added_seconds"] == pytest.approx(1.75)
    assert row(rows, "metric_turns", "t1")["agent_seconds"] == 1.25
    assert rows.get("metric_inbound", "SM2") is None  # answered: no longer kept


def test_the_latest_of_a_burst_starts_the_clock() -> None:
    second = MessageReceived("SM5", ANA, "and also", at(11))
    burst = ReplyRequested("r2", "agent", ("ok",), at(14), in_reply_to=("SM2", "SM5"), turn_id="t1")
    sent = ReplySent("r2", 0, "SM3", "queued", at(16), send_started_at=at(15))
    rows = fold(METRICS, CALL, HELLO, second, ANSWER, burst, sent)
    assert row(rows, "metric_replies", "r2")["added_seconds"] == pytest.approx(4 - 1.25)


def test_metrics_count_fallbacks_reopenings_and_the_funnel() -> None:
    again = MessageReceived("SM9", ANA, "thanks", at(30))
    rows = fold(
        METRICS,
        CALL,
        FIRST,
        FIRST_SENT,
        HELLO,
        AgentSessionOpened("s1", "agent_1", False, 0, at(10.5)),
        AgentSessionOpened("s2", "agent_1", True, 4, at(10.6)),
        AgentTurnFailed("t1", "empty", "", at(12)),
        ReplyRequested("r2", "fallback", ("sorry",), at(12), in_reply_to=("SM2",), turn_id="t1"),
        ReplySent("r2", 0, "SM3", "queued", at(13), send_started_at=at(12.5)),
        DeliveryStatusChanged("SM3", "failed", at(14), 63016, "window"),
        DeliveryStatusChanged("SM3", "undelivered", at(15), 63016, "window"),
        again,
    )
    increments = {
        row[:2]: row[2]
        for c in rows.changes()
        if c.table.name == "metric_counters"
        for row in c.increments
    }
    assert increments[("fallbacks", "empty")] == 1
    assert increments[("agent_sessions", "reopened")] == 1
    assert increments[("agent_sessions", "opened")] == 2
    failed = row(rows, "metric_messages", "SM3")
    assert (failed["status"], failed["error_code"]) == ("failed", 63016)  # one message, once
    assert row(rows, "metric_replies", "r2")["added_seconds"] is None  # the agent's failure
    funnel = row(rows, "metric_funnel", "conv_1")
    assert funnel["first_message_at"] == at(2)
    assert funnel["replied_at"] == at(10)
    assert funnel["continued_at"] == at(30)


def test_events_of_unknown_types_and_categories_are_ignored() -> None:
    unknown = RecordedEvent(
        1, "batch-btcal_1", 1, "BatchPolled", {"batch_id": "x"}, {}, uuid.uuid4(), T0
    )
    for projection in (HISTORY, CONVERSATIONS_PROJECTION, METRICS):
        assert projection.plan([unknown]) == []


def test_a_row_must_have_exactly_its_tables_columns() -> None:
    table = Table("t", columns("id text, n int"), key=("id",))
    rows = RowSet([table])
    with pytest.raises(ValueError, match="n"):
        rows.put("t", {"id": "a"})
    with pytest.raises(ValueError, match="extra"):
        rows.put("t", {"id": "a", "n": 1, "extra": 2})
    # As many columns, one of them wrong: refused once the page's changes are taken.
    rows.put("t", {"id": "a", "m": 1})
    with pytest.raises(ValueError, match="m, n"):
        rows.take_changes()
    live = RowSet([table])
    live.put("t", {"id": "b", "m": 1})
    with pytest.raises(ValueError, match="m, n"):
        list(live.changes())
    keyless = RowSet([table])
    with pytest.raises(ValueError, match="id, x"):
        keyless.put("t", {"x": "a", "n": 1})


def test_remembered_phones_and_times_are_the_ones_computed() -> None:
    def recorded(stream: str) -> RecordedEvent:
        return RecordedEvent(1, stream, 1, "BatchPolled", {}, {}, uuid.uuid4(), T0)

    for _ in range(2):  # computed, then remembered
        assert phone_of(recorded("phone-+15550001111")) == "+15550001111"
        assert phone_of(recorded("batch-btcal_1")) is None
        assert phone_of(recorded("supervision-phone-+1")) is None
        moment = time_of("2025-03-01T10:30:15.123456+01:30")
        assert moment == datetime(2025, 3, 1, 9, 0, 15, 123456, tzinfo=UTC)
        assert moment is not None
        assert moment.tzinfo is UTC
        assert time_of(None) is None
    assert moment is not None
    assert hour_of(moment) == moment.replace(minute=0, second=0, microsecond=0)
    assert hour_of(moment).tzinfo is UTC


def test_percentiles_interpolate_like_percentile_cont() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([5.0], 95) == 5.0
