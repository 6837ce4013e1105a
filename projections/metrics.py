"""Metrics: latency samples, message statuses, counters and the follow-up funnel.

Samples, not pre-computed percentiles: percentiles do not add up across hours or pages, so
the fold stores one row per sample and the query computes p50/p95/p99 per hour and
overall (`projections.queries`).

- ``metric_turns``: one row per agent answer: the agent's own latency (``agent_seconds``).
- ``metric_replies``: one row per reply. For a reply that answers inbound messages,
  ``total_seconds`` runs from the latest of those messages to the moment aftercall started
  sending its first part, and ``added_seconds`` is aftercall's own share: the total minus
  the agent's time for that turn. A media notice involves no agent, so all of it is
  aftercall's; a fallback's time went to waiting for an agent that failed, so it has no
  added latency. A part found again by reconciliation after a crash has no send start and
  gives no sample.
- ``metric_messages``: each message's current status and Twilio error code, keyed like
  ``message_history`` (a failed message counts once, however many callbacks said so).
- ``metric_counters``: fallbacks by reason, agent sessions opened and reopened, calls by
  outcome, replies by kind; written as increments.
- ``metric_funnel``: per completed call, when it reached each step: first message sent,
  the person replied, the conversation continued (the person wrote again after an answer
  to their reply). ``metric_phones`` follows the current call of each phone to get there.
- ``metric_inbound``: inbound messages not yet answered (their arrival time), dropped once
  a reply answers them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from projections.model import Key, Projection, Recorded, Row, RowSet, Rule, Table, columns
from projections.rules import (
    FAILED_STATUSES,
    fitting_code,
    hour_of,
    later_status,
    part_count,
    part_id,
    phone_of,
    seconds,
    time_of,
)

TURNS = Table(
    "metric_turns",
    columns("turn_id text, phone text, answered_at time, hour time, agent_seconds float"),
    key=("turn_id",),
    indexes=(("hour",),),
)
REPLIES = Table(
    "metric_replies",
    columns(
        "reply_id text, phone text, kind text, turn_id text, requested_at time,"
        " last_inbound_at time, agent_seconds float, send_started_at time, hour time,"
        " total_seconds float, added_seconds float"
    ),
    key=("reply_id",),
    indexes=(("hour",),),
)
MESSAGES = Table(
    "metric_messages",
    columns("message_id text, phone text, direction text, status text, error_code int"),
    key=("message_id",),
    indexes=(("status",),),
)
COUNTERS = Table(
    "metric_counters",
    columns("metric text, label text, count int"),
    key=("metric", "label"),
    counters=("count",),
)
FUNNEL = Table(
    "metric_funnel",
    columns(
        "call_conversation_id text, phone text, completed_at time, first_message_at time,"
        " replied_at time, continued_at time"
    ),
    key=("call_conversation_id",),
)
PHONES = Table(
    "metric_phones",
    columns(
        "phone text, call_conversation_id text, completed_at time, first_reply_id text,"
        " first_message_at time, replied_at time, answered bool, continued_at time"
    ),
    key=("phone",),
)
INBOUND = Table(
    "metric_inbound",
    columns("message_sid text, phone text, received_at time"),
    key=("message_sid",),
)


def _call_completed(rows: RowSet, phone: str, record: Recorded) -> None:
    rows.add("metric_counters", "calls", "completed", count=1)
    _new_call(rows, phone, record.data["conversation_id"], record)


def _call_failed(rows: RowSet, _phone: str, _record: Recorded) -> None:
    rows.add("metric_counters", "calls", "failed", count=1)


def _session_opened(rows: RowSet, _phone: str, record: Recorded) -> None:
    rows.add("metric_counters", "agent_sessions", "opened", count=1)
    if record.data.get("reopened"):
        rows.add("metric_counters", "agent_sessions", "reopened", count=1)


def _answered(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    at = time_of(data["answered_at"])
    assert at is not None
    rows.put(
        "metric_turns",
        {
            "turn_id": data["turn_id"],
            "phone": phone,
            "answered_at": at,
            "hour": hour_of(at),
            "agent_seconds": float(data["agent_seconds"]),
        },
    )


def _turn_failed(rows: RowSet, _phone: str, record: Recorded) -> None:
    rows.add("metric_counters", "fallbacks", record.data["reason"], count=1)


def _reply_failed(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    key = part_id(data["reply_id"], data["part"])
    row = rows.get("metric_messages", key) or _message(key, phone, "outbound", None)
    row.update(status="failed", error_code=fitting_code(data.get("error_code"), None)[0])
    rows.put("metric_messages", row)


def _status(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    sid = data["message_sid"]
    row = rows.get("metric_messages", sid) or _message(sid, phone, "outbound", None)
    row["status"] = later_status(row["status"], data["status"])
    if data["status"] in FAILED_STATUSES and data.get("error_code") is not None:
        # No message column here: a code out of range is only in the history's message.
        code, _ = fitting_code(data["error_code"], None)
        if code is not None:
            row["error_code"] = code
    rows.put("metric_messages", row)


def _message(message_id: str, phone: str, direction: str, status: str | None) -> Row:
    return {
        "message_id": message_id,
        "phone": phone,
        "direction": direction,
        "status": status,
        "error_code": None,
    }


def _new_call(rows: RowSet, phone: str, call_id: str, record: Recorded) -> None:
    completed = time_of(record.data.get("ended_at")) or record.recorded_at
    state = {
        "phone": phone,
        "call_conversation_id": call_id,
        "completed_at": completed,
        "first_reply_id": None,
        "first_message_at": None,
        "replied_at": None,
        "answered": False,
        "continued_at": None,
    }
    _funnel(rows, rows.put("metric_phones", state))


def _funnel(rows: RowSet, state: Row) -> None:
    """The phone's current call, as the funnel row of that call (written whole)."""
    rows.put(
        "metric_funnel",
        {
            "call_conversation_id": state["call_conversation_id"],
            "phone": state["phone"],
            "completed_at": state["completed_at"],
            "first_message_at": state["first_message_at"],
            "replied_at": state["replied_at"],
            "continued_at": state["continued_at"],
        },
    )


def _received(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    sid = data["message_sid"]
    at = time_of(data["received_at"])
    if rows.get("metric_messages", sid) is None:
        rows.put("metric_messages", _message(sid, phone, "inbound", "received"))
    rows.put("metric_inbound", {"message_sid": sid, "phone": phone, "received_at": at})
    state = rows.get("metric_phones", phone)
    if state is None or state["first_message_at"] is None:
        return
    if state["replied_at"] is None:
        state["replied_at"] = at
    elif state["answered"] and state["continued_at"] is None:
        state["continued_at"] = at
    else:
        return
    _funnel(rows, rows.put("metric_phones", state))


def _requested(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    rows.add("metric_counters", "replies", data["kind"], count=1)
    for index in range(part_count(data)):
        key = part_id(data["reply_id"], index)
        rows.put("metric_messages", _message(key, phone, "outbound", "requested"))
    latest = None
    for sid in data.get("in_reply_to") or ():
        inbound = rows.get("metric_inbound", sid)
        if inbound is not None:
            if latest is None or inbound["received_at"] > latest:
                latest = inbound["received_at"]
            rows.delete("metric_inbound", sid)
    agent_seconds = None
    if data.get("turn_id") and data["kind"] == "agent":
        turn = rows.get("metric_turns", data["turn_id"])
        agent_seconds = None if turn is None else turn["agent_seconds"]
    rows.put(
        "metric_replies",
        {
            "reply_id": data["reply_id"],
            "phone": phone,
            "kind": data["kind"],
            "turn_id": data.get("turn_id"),
            "requested_at": time_of(data["requested_at"]),
            "last_inbound_at": latest,
            "agent_seconds": agent_seconds,
            "send_started_at": None,
            "hour": None,
            "total_seconds": None,
            "added_seconds": None,
        },
    )
    state = rows.get("metric_phones", phone)
    if (
        data["kind"] == "first_message"
        and state is not None
        and state["first_reply_id"] is None
        and data.get("call_conversation_id") in (None, state["call_conversation_id"])
    ):
        state["first_reply_id"] = data["reply_id"]
        rows.put("metric_phones", state)


def _sent(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    sid = data["message_sid"]
    pending_key = part_id(data["reply_id"], data["part"])
    pending = rows.get("metric_messages", pending_key)
    early = rows.get("metric_messages", sid)
    status = later_status(pending["status"] if pending else None, data["status"])
    if pending is not None:
        rows.delete("metric_messages", pending_key)
    row = _message(sid, phone, "outbound", status)
    if early is not None:
        row["status"] = later_status(status, early["status"])
        row["error_code"] = early["error_code"]
    rows.put("metric_messages", row)

    reply = rows.get("metric_replies", data["reply_id"])
    started = time_of(data.get("send_started_at"))
    if reply is not None and data["part"] == 0 and started is not None:
        reply["send_started_at"] = started
        reply["hour"] = hour_of(started)
        if reply["last_inbound_at"] is not None:
            total = seconds(started, reply["last_inbound_at"])
            reply["total_seconds"] = total
            if reply["kind"] == "agent" and reply["agent_seconds"] is not None:
                reply["added_seconds"] = total - reply["agent_seconds"]
            elif reply["kind"] == "media_notice":
                reply["added_seconds"] = total
        rows.put("metric_replies", reply)

    state = rows.get("metric_phones", phone)
    if state is None:
        return
    if data["reply_id"] == state["first_reply_id"]:
        if state["first_message_at"] is not None:
            return
        state["first_message_at"] = time_of(data["sent_at"])
    elif state["replied_at"] is not None and not state["answered"]:
        state["answered"] = True
    else:
        return
    _funnel(rows, rows.put("metric_phones", state))


def _phone(phone: str) -> tuple[str, Key]:
    return ("metric_phones", (phone,))


def _msg(key: str) -> tuple[str, Key]:
    return ("metric_messages", (key,))


def _wants_requested(phone: str, data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    wanted: list[tuple[str, Key]] = [_phone(phone)]
    wanted += [("metric_inbound", (sid,)) for sid in data.get("in_reply_to") or ()]
    if data.get("turn_id"):
        wanted.append(("metric_turns", (data["turn_id"],)))
    wanted += [_msg(part_id(data["reply_id"], i)) for i in range(part_count(data))]
    return wanted


def _wants_sent(phone: str, data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    return [
        _phone(phone),
        ("metric_replies", (data["reply_id"],)),
        _msg(part_id(data["reply_id"], data["part"])),
        _msg(data["message_sid"]),
    ]


METRICS = Projection(
    "metrics",
    1,
    (TURNS, REPLIES, MESSAGES, COUNTERS, FUNNEL, PHONES, INBOUND),
    {
        "CallCompleted": Rule(_call_completed, lambda phone, _: [_phone(phone)]),
        "CallFailed": Rule(_call_failed),
        "MessageReceived": Rule(
            _received, lambda phone, data: [_phone(phone), _msg(data["message_sid"])]
        ),
        "AgentSessionOpened": Rule(_session_opened),
        "AgentAnswered": Rule(_answered),
        "AgentTurnFailed": Rule(_turn_failed),
        "ReplyRequested": Rule(_requested, _wants_requested),
        "ReplySent": Rule(_sent, _wants_sent),
        "ReplyFailed": Rule(
            _reply_failed, lambda _, data: [_msg(part_id(data["reply_id"], data["part"]))]
        ),
        "DeliveryStatusChanged": Rule(_status, lambda _, data: [_msg(data["message_sid"])]),
    },
    subject=phone_of,
)
