"""Conversations: one row per phone saying where its follow-up stands.

The stored ``state`` is where the conversation stood after its last event:

- ``active``: aftercall has work in hand: a first message due after a call, inbound
  messages not yet answered, or reply parts not yet settled with Twilio;
- ``waiting``: everything is answered; the next move is the person's;
- ``failed``: the last thing that happened went wrong and nothing has recovered it since:
  Twilio refused the last reply or failed to deliver the last message sent, the phone's
  actor was stopped by its supervisor, or the call itself failed;
- ``waiting_for_human``: the agent (its hand-off tool) or the person (a hand-off keyword)
  asked for a person at the business, and nobody has taken it over yet;
- ``with_human``: a person at the business has it (``control_by`` says who); the bot is
  silent;
- ``opted_out``: the person opted out; nothing is sent to them;
- ``unreachable``: Twilio says they cannot or will not receive (``unreachable_code``).

Who may speak comes before the rest: a conversation with a person, or opted out, says so
whatever else is pending (``stored_state`` gives the order).

``idle`` depends on the clock, not on an event, so it is decided when read
(`effective_state`): a ``waiting`` conversation with no message either way for 24 hours,
the length of WhatsApp's customer-service window.

``conversation_outbox`` holds the text of reply parts not yet settled (keyed
``<reply_id>/<part>``) so that the part Twilio accepts can become ``last_outbound_text``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from projections.model import Key, Projection, Recorded, Row, RowSet, Rule, Table, Wants, columns
from projections.rules import FAILED_STATUSES, part_count, part_id, phone_of, time_of

#: WhatsApp's customer-service window (free-form text only this long after the last inbound).
SERVICE_WINDOW: Final = timedelta(hours=24)
#: A waiting conversation with no message either way for this long is idle.
IDLE_AFTER: Final = SERVICE_WINDOW
STATES: Final = (
    "active",
    "waiting",
    "idle",
    "failed",
    "waiting_for_human",
    "with_human",
    "opted_out",
    "unreachable",
)

CONVERSATIONS = Table(
    "conversations",
    columns(
        "phone text, state text, call_conversation_id text, calls_completed int,"
        " calls_failed int, messages_in int, messages_out int, replies_failed int,"
        " fallbacks int, unanswered int, pending_parts int, first_message_due bool,"
        " failing bool, actor_stopped bool, last_inbound_at time, last_inbound_text text,"
        " last_outbound_at time, last_outbound_text text, last_outbound_sid text,"
        " window_ends_at time,"
        " last_activity_at time, last_error text, last_error_at time, started_at time,"
        " updated_at time, position int, control text, control_by text, control_reason text,"
        " control_since time, opted_out bool, unreachable_code int"
    ),
    key=("phone",),
    indexes=(("state", "last_activity_at"), ("last_activity_at",)),
)
OUTBOX = Table(
    "conversation_outbox",
    columns("part_id text, phone text, body text"),
    key=("part_id",),
)

#: Events only a working actor records: it is running again after a stop.
_PROGRESS: Final = frozenset({"AgentAsked", "AgentSessionOpened", "ReplyRequested", "ReplySent"})


def _subject(record: Recorded) -> str | None:
    """The phone a record is about: its phone stream, or the actor a supervisor stopped."""
    phone = phone_of(record)
    if phone is not None:
        return phone
    actor = record.data.get("actor_id") if record.type == "ActorStopped" else None
    return actor if isinstance(actor, str) and actor.startswith("+") else None


def _conversation(phone: str, _data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    return [("conversations", (phone,))]


def _with_part(phone: str, data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    return [
        ("conversations", (phone,)),
        ("conversation_outbox", (part_id(data["reply_id"], data["part"]),)),
    ]


def _with_parts(phone: str, data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    return [
        ("conversations", (phone,)),
        *(("conversation_outbox", (part_id(data["reply_id"], p),)) for p in data["parts"]),
    ]


def _rule(change: Callable[[RowSet, Row, Recorded], None], wants: Wants = _conversation) -> Rule:
    """A rule that changes the phone's row, then restates its state and position."""

    def apply(rows: RowSet, phone: str, record: Recorded) -> None:
        row = rows.get("conversations", phone) or _new(phone, record)
        if record.type in _PROGRESS:
            row["actor_stopped"] = False
        change(rows, row, record)
        row["state"] = stored_state(row)
        row["updated_at"] = record.recorded_at
        row["position"] = record.position
        rows.put("conversations", row)

    return Rule(apply, wants)


def _call_completed(_rows: RowSet, row: Row, record: Recorded) -> None:
    row["call_conversation_id"] = record.data["conversation_id"]
    row["calls_completed"] += 1
    row["first_message_due"] = True
    row["failing"] = False


def _call_failed(_rows: RowSet, row: Row, record: Recorded) -> None:
    row["calls_failed"] += 1
    row["failing"] = row["messages_out"] == 0  # nothing reached the person yet
    _error(row, f"call failed: {record.data['reason']}", record.recorded_at)


def _received(_rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    at = time_of(data["received_at"])
    row["messages_in"] += 1
    row["unanswered"] += 1
    row["unreachable_code"] = None  # they wrote: they can receive
    if row["last_inbound_at"] is None or (at is not None and at >= row["last_inbound_at"]):
        row["last_inbound_at"] = at
        row["last_inbound_text"] = data.get("body") or ""
        row["window_ends_at"] = None if at is None else at + SERVICE_WINDOW
    _touch(row, at)


def _turn_failed(_rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    row["fallbacks"] += 1
    detail = data.get("detail") or ""
    message = f"agent {data['reason']}: {detail}" if detail else f"agent {data['reason']}"
    _error(row, message, time_of(data["failed_at"]))


def _session_closed(_rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    if data.get("likely_cause"):
        code = data.get("code")
        where = f" ({code})" if code is not None else ""
        message = f"agent session closed{where}: {data['likely_cause']}"
        _error(row, message, time_of(data["closed_at"]))


def _requested(rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    if data["kind"] == "first_message":
        row["first_message_due"] = False
    row["unanswered"] = max(0, row["unanswered"] - len(data.get("in_reply_to") or ()))
    parts = list(data.get("parts") or ()) or ["[template]"]
    for index in range(part_count(data)):
        key = part_id(data["reply_id"], index)
        body = parts[index] if index < len(parts) else ""
        rows.put("conversation_outbox", {"part_id": key, "phone": row["phone"], "body": body})
        row["pending_parts"] += 1


def _sent(rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    at = time_of(data["sent_at"])
    pending = _settle(rows, row, data)
    row["messages_out"] += 1
    row["failing"] = False
    row["last_outbound_at"] = at
    row["last_outbound_sid"] = data["message_sid"]
    if pending is not None:
        row["last_outbound_text"] = pending["body"]
    _touch(row, at)


def _reply_failed(rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    _settle(rows, row, data)
    row["replies_failed"] += 1
    row["failing"] = True
    _error(
        row,
        _twilio(data.get("error_code"), data.get("detail") or "refused"),
        time_of(data["failed_at"]),
    )


def _status(_rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    if data["status"] in FAILED_STATUSES:
        # A late callback about an older message says nothing about where things stand now.
        if data["message_sid"] == row["last_outbound_sid"]:
            row["failing"] = True
        detail = data.get("error_message") or data["status"]
        _error(row, _twilio(data.get("error_code"), detail), time_of(data["at"]))


def _stopped(_rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    row["actor_stopped"] = True
    _error(
        row,
        f"actor stopped after {data['restarts']} restarts: "
        f"{data['error_type']}: {data['error_message']}",
        time_of(data["at"]),
    )


def _withdrawn(rows: RowSet, row: Row, record: Recorded) -> None:
    for part in record.data["parts"]:
        _settle(rows, row, {"reply_id": record.data["reply_id"], "part": part})


def _opted_out(_rows: RowSet, row: Row, record: Recorded) -> None:
    row["opted_out"] = True
    _consumed(row, record)


def _opted_in(_rows: RowSet, row: Row, record: Recorded) -> None:
    row["opted_out"] = False
    _consumed(row, record)


def _consumed(row: Row, record: Recorded) -> None:
    """The keyword's message and those before it: answered by nobody, on purpose."""
    row["unanswered"] = max(0, row["unanswered"] - 1 - len(record.data.get("dropped") or ()))


def _unreachable(_rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    code = data.get("error_code")
    row["unreachable_code"] = code if type(code) is int and abs(code) < 2**63 else None
    _error(row, _twilio(code, data.get("meaning") or "cannot receive"), time_of(data["at"]))


def _human_requested(_rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    _control(row, "waiting_for_human", data["by"], data.get("reason"), data["at"])


def _took_over(_rows: RowSet, row: Row, record: Recorded) -> None:
    data = record.data
    _control(row, "human", data["operator"], data.get("reason"), data["at"])


def _handed_back(_rows: RowSet, row: Row, record: Recorded) -> None:
    if record.data.get("operator") is not None:
        row["unanswered"] = 0  # read by the person at the business (followup.conversation)
    _control(row, "bot", None, record.data.get("reason"), record.data["at"])


def _control(row: Row, control: str, by: Any, reason: Any, at: Any) -> None:
    row["control"] = control
    row["control_by"] = by
    row["control_reason"] = reason
    row["control_since"] = time_of(at)


def _first_message_skipped(_rows: RowSet, row: Row, _record: Recorded) -> None:
    row["first_message_due"] = False


def _nothing(_rows: RowSet, _row: Row, _record: Recorded) -> None:
    """Progress only: the actor is running (see ``_PROGRESS``)."""


def _twilio(code: Any, detail: str) -> str:
    return f"Twilio {code}: {detail}" if code is not None else f"Twilio: {detail}"


def _settle(rows: RowSet, row: Row, data: Any) -> Row | None:
    """One reply part has its outcome: it leaves the outbox (once, whatever repeats)."""
    key = part_id(data["reply_id"], data["part"])
    pending = rows.get("conversation_outbox", key)
    if pending is not None:
        rows.delete("conversation_outbox", key)
        row["pending_parts"] = max(0, row["pending_parts"] - 1)
    return pending


def _touch(row: Row, at: datetime | None) -> None:
    if at is not None and (row["last_activity_at"] is None or at > row["last_activity_at"]):
        row["last_activity_at"] = at


def _error(row: Row, message: str, at: datetime | None) -> None:
    row["last_error"] = message[:500]
    row["last_error_at"] = at


def _new(phone: str, record: Recorded) -> Row:
    row: dict[str, Any] = dict.fromkeys(CONVERSATIONS.column_names)
    for name in (
        "calls_completed",
        "calls_failed",
        "messages_in",
        "messages_out",
        "replies_failed",
        "fallbacks",
        "unanswered",
        "pending_parts",
    ):
        row[name] = 0
    row.update(
        phone=phone,
        first_message_due=False,
        failing=False,
        actor_stopped=False,
        started_at=record.recorded_at,
        control="bot",
        opted_out=False,
    )
    return row


def stored_state(row: Row) -> str:
    """The state after the row's last event (``idle`` is decided when read)."""
    if row["actor_stopped"]:
        return "failed"
    if row["unreachable_code"] is not None:
        return "unreachable"
    if row["opted_out"]:
        return "opted_out"
    if row["control"] == "waiting_for_human":
        return "waiting_for_human"
    if row["control"] == "human":
        return "with_human"
    if row["first_message_due"] or row["unanswered"] > 0 or row["pending_parts"] > 0:
        return "active"
    if row["failing"]:
        return "failed"
    return "waiting"


def effective_state(state: str, last_activity_at: datetime | None, now: datetime) -> str:
    """``waiting`` becomes ``idle`` once nothing has happened for `IDLE_AFTER`."""
    if state == "waiting" and (last_activity_at is None or now - last_activity_at >= IDLE_AFTER):
        return "idle"
    return state


CONVERSATIONS_PROJECTION = Projection(
    "conversations",
    3,
    (CONVERSATIONS, OUTBOX),
    {
        "CallCompleted": _rule(_call_completed),
        "CallFailed": _rule(_call_failed),
        "MessageReceived": _rule(_received),
        "AgentSessionOpened": _rule(_nothing),
        "AgentSessionClosed": _rule(_session_closed),
        "AgentAsked": _rule(_nothing),
        "AgentTurnFailed": _rule(_turn_failed),
        "ReplyRequested": _rule(_requested),
        "ReplySent": _rule(_sent, _with_part),
        "ReplyFailed": _rule(_reply_failed, _with_part),
        "DeliveryStatusChanged": _rule(_status),
        "ActorStopped": _rule(_stopped),
        "ReplyWithdrawn": _rule(_withdrawn, _with_parts),
        "OptedOut": _rule(_opted_out),
        "OptedIn": _rule(_opted_in),
        "RecipientUnreachable": _rule(_unreachable),
        "HumanRequested": _rule(_human_requested),
        "HumanTookOver": _rule(_took_over),
        "HandedBack": _rule(_handed_back),
        "FirstMessageSkipped": _rule(_first_message_skipped),
        "AgentReplySuppressed": _rule(_nothing),
    },
    subject=_subject,
)
