"""What the operator console shows that the other read models do not keep.

The console reads the history (messages and their statuses), the conversations (state,
last messages, errors) and the metrics (latencies, funnel) as they are; this projection
adds what a page needs and they have no row for, keyed so a page is a few index reads
whatever the size of the log:

- ``console_people``: per phone, the person's name (the call's, else their WhatsApp
  profile name), a lower-case search text, and ``activity_at`` (when the conversation
  last moved: a call, a message in or out) with an index led by (``activity_at``,
  ``phone``), which the conversation list pages through newest first by keyset. Every event the
  conversations projection folds makes sure the phone has a row, so joining the two never
  loses a conversation, whatever event types that projection learns later.
- ``console_calls``: every call (completed or failed), with its summary, the end of its
  transcript and its batch: the top of a conversation's page and the calls page.
- ``console_followups``: the first message after each call (by reply id): whether it went
  out, and if not what Twilio said; the calls page's "followed up?".
- ``console_batches`` and ``console_recipients``: batch calling as the call monitor saw it
  (``events.batches``): recipients, how each call ended, why a recipient got no call event.
- ``console_timeline``: what happens between the messages, in the log's order: agent
  sessions opened, reopened and closed, the agent's time per turn, fallbacks and why, a
  reply delayed or refused by Twilio, the actor stopped by its supervisor; who may speak:
  a person asked for, taking over and handing back, opt-out and opt-in, a recipient who
  cannot receive, an answer suppressed or a reply withdrawn for it.
- ``console_failures``: every message Twilio refused or failed to deliver, by time: the
  overview's "delivery failures today" and its errors by code.

Folds read ``record.data`` as the other read models do (``projections.rules``), and keep
every text short: a page shows them, and a hostile value must not make a row unwritable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from followup.conversation import CallContext, customer_name
from projections.conversations import CONVERSATIONS_PROJECTION
from projections.model import Key, Projection, Recorded, Row, RowSet, Rule, Table, columns
from projections.rules import FAILED_STATUSES, fitting_code, part_id, time_of

#: The transcript lines kept per call: the end of the call is what the follow-up continues.
TRANSCRIPT_TAIL: Final = 6
#: Longest text kept in a cell (summaries, details, names); pages cut it further.
MAX_TEXT: Final = 2000
MAX_NAME: Final = 120

PEOPLE = Table(
    "console_people",
    columns("phone text, name text, name_from text, search text, activity_at time, position int"),
    key=("phone",),
    # Newest first by keyset; search and name ride along so a search is a scan of this
    # index alone. (A search's plan cannot know its pattern: a prepared statement's generic
    # plan walks the index for every pattern, and one that matches nothing walked 100,000
    # rows of the table in ~90 ms, against ~45 ms in the index.)
    indexes=(("activity_at", "phone", "search", "name"),),
)
CALLS = Table(
    "console_calls",
    columns(
        "conversation_id text, phone text, outcome text, agent_id text, customer_name text,"
        " summary text, transcript_tail text, transcript_lines int, reason text, batch_id text,"
        " recipient_id text, ended_at time, source text, follow_up bool, recorded_at time,"
        " position int"
    ),
    key=("conversation_id",),
    indexes=(("phone", "position"), ("batch_id",), ("position",)),
)
FOLLOWUPS = Table(
    "console_followups",
    columns(
        "reply_id text, call_conversation_id text, phone text, template bool, status text,"
        " message_sid text, error_code int, detail text, requested_at time, settled_at time"
    ),
    key=("reply_id",),
    indexes=(("call_conversation_id",),),
)
BATCHES = Table(
    "console_batches",
    columns(
        "batch_id text, agent_id text, name text, recipients int, status text, created_at time,"
        " seen_at time, finished_at time, settled int, completed int, voicemail int, failed int,"
        " cancelled int, retry_count int, position int"
    ),
    key=("batch_id",),
    indexes=(("seen_at",),),
)
RECIPIENTS = Table(
    "console_recipients",
    columns(
        "settle_id text, batch_id text, recipient_id text, conversation_id text, phone text,"
        " outcome text, call_record text, detail text, settled_at time, position int"
    ),
    key=("settle_id",),
    indexes=(("batch_id", "position"),),
)
TIMELINE = Table(
    "console_timeline",
    columns("position int, phone text, kind text, at time, seconds float, code int, detail text"),
    key=("position",),
    indexes=(("phone", "position"),),
)
FAILURES = Table(
    "console_failures",
    columns("message_id text, phone text, error_code int, detail text, at time"),
    key=("message_id",),
    indexes=(("at",),),
)

#: Events that move a conversation in the list: a call, a message in or out.
ACTIVITY_TYPES: Final = frozenset(
    {"CallCompleted", "CallFailed", "MessageReceived", "ReplySent", "ReplyFailed"}
)


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _blank(table: Table) -> Row:
    return dict.fromkeys(table.column_names)


def _subject(record: Recorded) -> str | None:
    """The conversation a record is about, exactly as the conversations projection says
    (so every conversation it has is one here), else the batch of a batch stream."""
    subject = CONVERSATIONS_PROJECTION.subject(record)
    if subject is not None:
        return subject
    category, _, ident = record.stream.partition("-")
    return ident or None if category == "batch" else None


# -- people -------------------------------------------------------------------------------
def _person(rows: RowSet, phone: str, record: Recorded) -> Row:
    """The phone's row, made when missing; moved to the top of the list by activity."""
    row = rows.get("console_people", phone)
    if row is None:
        row = _blank(PEOPLE) | {"phone": phone, "activity_at": record.recorded_at}
    if record.type in ACTIVITY_TYPES and (
        row["activity_at"] is None or record.recorded_at > row["activity_at"]
    ):
        row["activity_at"] = record.recorded_at
    row["position"] = record.position
    return row


def _keep_person(rows: RowSet, row: Row) -> None:
    row["search"] = f"{row['phone']} {row['name'] or ''}".lower()
    rows.put("console_people", row)


def _touch(rows: RowSet, phone: str, record: Recorded) -> None:
    _keep_person(rows, _person(rows, phone, record))


def _people(phone: str, _data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    return [("console_people", (phone,))]


# -- calls --------------------------------------------------------------------------------
def _call_name(data: Mapping[str, Any]) -> str | None:
    """The person's name as the follow-up greets them (``followup.conversation``)."""
    variables = data.get("dynamic_variables")
    call = CallContext(
        conversation_id="",
        agent_id="",
        summary="",
        transcript=(),
        dynamic_variables=dict(variables) if isinstance(variables, Mapping) else {},
        customer_name=data.get("customer_name")
        if isinstance(data.get("customer_name"), str)
        else None,
    )
    return _text(customer_name(call), MAX_NAME)


def _call(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    completed = record.type == "CallCompleted"
    person = _person(rows, phone, record)
    if completed:
        name = _call_name(data)
        if name:
            person.update(name=name, name_from="call")
    _keep_person(rows, person)
    transcript = [
        {"role": _text(line.get("role"), 20), "message": _text(line.get("message"), 500)}
        for line in data.get("transcript") or ()
        if isinstance(line, Mapping)
    ]
    rows.put(
        "console_calls",
        {
            "conversation_id": data["conversation_id"],
            "phone": phone,
            "outcome": "completed" if completed else "failed",
            "agent_id": _text(data.get("agent_id"), 200),
            "customer_name": _call_name(data) if completed else None,
            "summary": _text(data.get("summary")),
            "transcript_tail": json.dumps(transcript[-TRANSCRIPT_TAIL:]) if transcript else None,
            "transcript_lines": len(transcript),
            "reason": _text(data.get("reason"), 500),
            "batch_id": _text(data.get("batch_id"), 200),
            "recipient_id": _text(data.get("recipient_id"), 200),
            "ended_at": time_of(data.get("ended_at")),
            "source": _text(data.get("source"), 40),
            "follow_up": bool(data.get("follow_up")) if not completed else True,
            "recorded_at": record.recorded_at,
            "position": record.position,
        },
    )


def _received(rows: RowSet, phone: str, record: Recorded) -> None:
    person = _person(rows, phone, record)
    profile = _text(record.data.get("profile_name"), MAX_NAME)
    if profile and person["name_from"] != "call":
        person.update(name=profile, name_from="whatsapp")
    _keep_person(rows, person)


# -- first messages -----------------------------------------------------------------------
def _requested(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    call = data.get("call_conversation_id")
    if data.get("kind") != "first_message" or not call:
        return
    rows.put(
        "console_followups",
        {
            "reply_id": data["reply_id"],
            "call_conversation_id": call,
            "phone": phone,
            "template": data.get("template") is not None,
            "status": "requested",
            "message_sid": None,
            "error_code": None,
            "detail": None,
            "requested_at": time_of(data.get("requested_at")),
            "settled_at": None,
        },
    )


def _sent(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    followup = rows.get("console_followups", data["reply_id"])
    if followup is not None and data.get("part") == 0:
        followup.update(
            status="sent", message_sid=data.get("message_sid"), settled_at=time_of(data["sent_at"])
        )
        rows.put("console_followups", followup)


def _reply_failed(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    code, detail = fitting_code(data.get("error_code"), _text(data.get("detail"), 500))
    at = time_of(data.get("failed_at"))
    followup = rows.get("console_followups", data["reply_id"])
    if followup is not None and followup["status"] != "sent":
        followup.update(status="failed", error_code=code, detail=detail, settled_at=at)
        rows.put("console_followups", followup)
    _timeline(rows, phone, record, "reply_failed", at, code=code, detail=detail)
    key = part_id(data["reply_id"], data["part"])
    rows.put(
        "console_failures",
        {"message_id": key, "phone": phone, "error_code": code, "detail": detail, "at": at},
    )


def _followup(_phone: str, data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    return [("console_followups", (data["reply_id"],))]


def _status(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    if data.get("status") not in FAILED_STATUSES:
        return
    code, detail = fitting_code(
        data.get("error_code"), _text(data.get("error_message") or data.get("status"), 500)
    )
    rows.put(
        "console_failures",
        {
            "message_id": data["message_sid"],
            "phone": phone,
            "error_code": code,
            "detail": detail,
            "at": time_of(data.get("at")),
        },
    )


# -- between the messages -----------------------------------------------------------------
def _timeline(
    rows: RowSet,
    phone: str,
    record: Recorded,
    kind: str,
    at: Any,
    *,
    seconds: float | None = None,
    code: int | None = None,
    detail: str | None = None,
) -> None:
    rows.put(
        "console_timeline",
        {
            "position": record.position,
            "phone": phone,
            "kind": kind,
            "at": at,
            "seconds": seconds,
            "code": code,
            "detail": detail,
        },
    )


def _session_opened(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    primed = data.get("primed_turns")
    _timeline(
        rows,
        phone,
        record,
        "session_reopened" if data.get("reopened") else "session_opened",
        time_of(data.get("opened_at")),
        detail=f"primed with {primed} earlier turns" if primed else None,
    )


def _session_closed(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    code, _ = fitting_code(data.get("code"), None)
    cause = data.get("likely_cause")
    reason = data.get("reason")
    _timeline(
        rows,
        phone,
        record,
        "session_closed",
        time_of(data.get("closed_at")),
        code=code,
        detail=_text(f"{reason}: {cause}" if cause and reason else cause or reason, 500),
    )


def _answered(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    seconds = data.get("agent_seconds")
    notes = []
    if data.get("streamed_parts"):
        notes.append(f"streamed in {data['streamed_parts']} parts")
    if data.get("corrected"):
        notes.append("corrected by the agent")
    _timeline(
        rows,
        phone,
        record,
        "agent_answered",
        time_of(data.get("answered_at")),
        seconds=float(seconds) if isinstance(seconds, int | float) else None,
        detail=", ".join(notes) or None,
    )


def _turn_failed(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    reason = _text(data.get("reason"), 40) or "unknown"
    detail = _text(data.get("detail"), 500)
    _timeline(
        rows,
        phone,
        record,
        "fallback",
        time_of(data.get("failed_at")),
        detail=f"{reason}: {detail}" if detail else reason,
    )


def _delayed(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    retry = data.get("retry_in_seconds")
    _timeline(
        rows,
        phone,
        record,
        "reply_delayed",
        time_of(data.get("at")),
        seconds=float(retry) if isinstance(retry, int | float) else None,
        detail=_text(data.get("detail"), 500),
    )


def _stopped(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    _timeline(
        rows,
        phone,
        record,
        "actor_stopped",
        time_of(data.get("at")),
        seconds=data.get("cooldown_seconds")
        if isinstance(data.get("cooldown_seconds"), int | float)
        else None,
        detail=_text(
            f"after {data.get('restarts')} restarts: {data.get('error_type')}: "
            f"{data.get('error_message')}",
            500,
        ),
    )


# -- who may speak ------------------------------------------------------------------------
#: Why the bot's words did not go (``events.conversation.SilenceReason``), for people.
SILENCE_TEXT: Final[Mapping[str, str]] = {
    "human": "a person at the business has the conversation",
    "opted_out": "the person opted out",
    "unreachable": "the person cannot receive",
}


def _control_note(kind: str, who: str, at_key: str = "at") -> Callable[..., None]:
    """A note for a fact about who may speak: ``who`` is the field naming the person (or
    the requester), shown with the reason the fact carries."""

    def note(rows: RowSet, phone: str, record: Recorded) -> None:
        _touch(rows, phone, record)
        data = record.data
        name = _text(data.get(who), MAX_NAME) if who else None
        if kind == "human_requested" and name:
            name = f"the {name}"  # the agent, the customer
        raw = data.get("reason") or data.get("keyword")
        reason = SILENCE_TEXT.get(raw, _text(raw, 500)) if isinstance(raw, str) else None
        detail = reason
        if name:
            detail = f"by {name} ({reason})" if reason else f"by {name}"
        _timeline(rows, phone, record, kind, time_of(data.get(at_key)), detail=detail)

    return note


def _unreachable(rows: RowSet, phone: str, record: Recorded) -> None:
    _touch(rows, phone, record)
    data = record.data
    code, meaning = fitting_code(data.get("error_code"), _text(data.get("meaning"), 500))
    _timeline(rows, phone, record, "unreachable", time_of(data.get("at")), code=code,
              detail=meaning)  # fmt: skip


# -- batches ------------------------------------------------------------------------------
def _batch(batch_id: str) -> Row:
    row = _blank(BATCHES) | {"batch_id": batch_id}
    for counter in ("recipients", "settled", "completed", "voicemail", "failed", "cancelled"):
        row[counter] = 0
    row["retry_count"] = 0
    return row


def _batch_seen(rows: RowSet, _subject_: str, record: Recorded) -> None:
    data = record.data
    batch_id = data["batch_id"]
    row = rows.get("console_batches", batch_id) or _batch(batch_id)
    row.update(
        agent_id=_text(data.get("agent_id"), 200),
        name=_text(data.get("name"), 500),
        recipients=data.get("recipients") if type(data.get("recipients")) is int else 0,
        status=_text(data.get("status"), 40),
        created_at=time_of(data.get("created_at")),
        seen_at=time_of(data.get("seen_at")),
        position=record.position,
    )
    rows.put("console_batches", row)


def _settled(rows: RowSet, _subject_: str, record: Recorded) -> None:
    data = record.data
    batch_id = data["batch_id"]
    row = rows.get("console_batches", batch_id) or _batch(batch_id)
    row["settled"] += 1
    rows.put("console_batches", row)
    settle_id = "/".join(
        (batch_id, str(data["recipient_id"]), str(data.get("conversation_id") or "-"))
    )
    rows.put(
        "console_recipients",
        {
            "settle_id": settle_id,
            "batch_id": batch_id,
            "recipient_id": _text(data.get("recipient_id"), 200),
            "conversation_id": _text(data.get("conversation_id"), 200),
            "phone": _text(data.get("phone"), 40),
            "outcome": _text(data.get("outcome"), 40),
            "call_record": _text(data.get("call_record"), 40),
            "detail": _text(data.get("detail"), 500),
            "settled_at": time_of(data.get("settled_at")),
            "position": record.position,
        },
    )


def _batch_finished(rows: RowSet, _subject_: str, record: Recorded) -> None:
    data = record.data
    batch_id = data["batch_id"]
    row = rows.get("console_batches", batch_id) or _batch(batch_id)
    row.update(status=_text(data.get("status"), 40), finished_at=time_of(data.get("finished_at")))
    for counter in ("completed", "voicemail", "failed", "cancelled", "retry_count"):
        value = data.get(counter)
        if type(value) is int:
            row[counter] = value
    rows.put("console_batches", row)


def _batch_row(_subject_: str, data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    return [("console_batches", (data["batch_id"],))]


def _touching(rule: Rule) -> Rule:
    """The rule, reading the phone's people row too (every rule here touches it)."""

    def wants(phone: str, data: Mapping[str, Any]) -> list[tuple[str, Key]]:
        return [*_people(phone, data), *rule.wants(phone, data)]

    return Rule(rule.apply, wants)


def _rules() -> dict[str, Rule]:
    # First a plain touch for every event the conversations projection folds (so each of
    # its rows has one here), then the rules that do more.
    rules: dict[str, Rule] = dict.fromkeys(CONVERSATIONS_PROJECTION.rules, Rule(_touch, _people))
    phone_rules = {
        "CallCompleted": Rule(_call),
        "CallFailed": Rule(_call),
        "MessageReceived": Rule(_received),
        "ReplyRequested": Rule(_requested),
        "ReplySent": Rule(_sent, _followup),
        "ReplyFailed": Rule(_reply_failed, _followup),
        "DeliveryStatusChanged": Rule(_status),
        "AgentSessionOpened": Rule(_session_opened),
        "AgentSessionClosed": Rule(_session_closed),
        "AgentAnswered": Rule(_answered),
        "AgentTurnFailed": Rule(_turn_failed),
        "ReplyDelayed": Rule(_delayed),
        "ActorStopped": Rule(_stopped),
        "HumanRequested": Rule(_control_note("human_requested", "by")),
        "HumanTookOver": Rule(_control_note("human_took_over", "operator")),
        "HandedBack": Rule(_control_note("handed_back", "operator")),
        "OptedOut": Rule(_control_note("opted_out", "")),
        "OptedIn": Rule(_control_note("opted_in", "")),
        "RecipientUnreachable": Rule(_unreachable),
        "AgentReplySuppressed": Rule(_control_note("reply_suppressed", "")),
        "ReplyWithdrawn": Rule(_control_note("reply_withdrawn", "")),
        "FirstMessageSkipped": Rule(_control_note("first_message_skipped", "")),
    }
    rules.update({name: _touching(rule) for name, rule in phone_rules.items()})
    rules.update(
        {
            "BatchSeen": Rule(_batch_seen, _batch_row),
            "RecipientSettled": Rule(_settled, _batch_row),
            "BatchFinished": Rule(_batch_finished, _batch_row),
        }
    )
    return rules


CONSOLE_PROJECTION = Projection(
    "console",
    # 2: notes for who may speak (hand-off, opt-out, recipients who cannot receive).
    2,
    (PEOPLE, CALLS, FOLLOWUPS, BATCHES, RECIPIENTS, TIMELINE, FAILURES),
    _rules(),
    subject=_subject,
)
