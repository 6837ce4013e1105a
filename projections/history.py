"""Message history: every WhatsApp message in and out, per phone, as a person reads it.

One row per message in ``message_history``. An inbound message is keyed by its Twilio
MessageSid. An outbound part is keyed ``<reply_id>/<part>`` from the moment it is requested
until Twilio accepts it; then the row moves to its MessageSid (the key status callbacks
carry). A status callback can beat our own ``ReplySent`` to the log (Twilio calls back
while the actor is still recording the send): it then makes a row under the MessageSid with
only the status, and ``ReplySent`` fills in the rest. Statuses only move forward
(`rules.later_status`), so callbacks in any order end in the same row.

``history_phones`` remembers the last call of each phone: every message is stamped with
the call it followed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from projections.model import Key, Projection, Recorded, Row, RowSet, Rule, Table, columns
from projections.rules import (
    FAILED_STATUSES,
    fitting_code,
    later_status,
    part_count,
    part_id,
    phone_of,
    time_of,
)

MESSAGES = Table(
    "message_history",
    columns(
        "message_id text, phone text, direction text, message_sid text, reply_id text,"
        " part int, kind text, body text, media_count int, status text, error_code int,"
        " error_message text, call_conversation_id text, in_reply_to text, created_at time,"
        " sent_at time, delivered_at time, read_at time, failed_at time, updated_at time,"
        " position int"
    ),
    key=("message_id",),
    indexes=(("phone", "position"),),
)
PHONES = Table(
    "history_phones",
    columns("phone text, call_conversation_id text, calls int"),
    key=("phone",),
)

_TIME_OF_STATUS = {"delivered": "delivered_at", "read": "read_at"}


def _call_completed(rows: RowSet, phone: str, record: Recorded) -> None:
    known = rows.get("history_phones", phone)
    rows.put(
        "history_phones",
        {
            "phone": phone,
            "call_conversation_id": record.data["conversation_id"],
            "calls": 1 if known is None else known["calls"] + 1,
        },
    )


def _failed(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    key = part_id(data["reply_id"], data["part"])
    row = rows.get("message_history", key) or _bare(key, phone, record)
    at = time_of(data["failed_at"])
    code, message = fitting_code(data.get("error_code"), data.get("detail"))
    row.update(
        status="failed",
        error_code=code,
        error_message=message,
        failed_at=at,
        updated_at=at,
    )
    rows.put("message_history", row)


def _withdrawn(rows: RowSet, phone: str, record: Recorded) -> None:
    """Parts of a reply that will not be sent (a person took over, the person opted out,
    Twilio says they cannot receive): shown as requested, then withdrawn, with why."""
    data = record.data
    at = time_of(data["at"])
    for part in data["parts"]:
        key = part_id(data["reply_id"], part)
        row = rows.get("message_history", key) or _bare(key, phone, record)
        row.update(status="withdrawn", error_message=f"withdrawn: {data['reason']}", updated_at=at)
        rows.put("message_history", row)


def _current_call(rows: RowSet, phone: str) -> str | None:
    known = rows.get("history_phones", phone)
    return None if known is None else known["call_conversation_id"]


def _received(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    sid = data["message_sid"]
    if rows.get("message_history", sid) is not None:
        return  # the log never repeats it (derived ids); a row is kept as first written
    at = time_of(data["received_at"])
    rows.put(
        "message_history",
        {
            **_empty(sid, phone, record),
            "direction": "inbound",
            "message_sid": sid,
            "body": data.get("body") or "",
            "media_count": len(data.get("media") or ()),
            "status": "received",
            "call_conversation_id": _current_call(rows, phone),
            "created_at": at,
            "updated_at": at,
        },
    )


def _requested(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    at = time_of(data["requested_at"])
    template = data.get("template")
    if template is not None:
        bodies = [f"[template {template['content_sid']}] {template.get('variables') or {}}"]
    else:
        bodies = list(data.get("parts") or ())
    call = data.get("call_conversation_id") or _current_call(rows, phone)
    for index, body in enumerate(bodies):
        key = part_id(data["reply_id"], index)
        rows.put(
            "message_history",
            {
                **_empty(key, phone, record),
                "direction": "outbound",
                "reply_id": data["reply_id"],
                "part": index,
                "kind": data["kind"],
                "body": body,
                "status": "requested",
                "call_conversation_id": call,
                "in_reply_to": " ".join(data.get("in_reply_to") or ()) or None,
                "created_at": at,
                "updated_at": at,
            },
        )


def _sent(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    sid = data["message_sid"]
    pending_key = part_id(data["reply_id"], data["part"])
    pending = rows.get("message_history", pending_key)
    early = rows.get("message_history", sid)  # status callbacks that came first
    row = dict(pending) if pending is not None else _bare(sid, phone, record)
    if pending is not None:
        rows.delete("message_history", pending_key)
    at = time_of(data["sent_at"])
    row.update(
        message_id=sid,
        message_sid=sid,
        reply_id=data["reply_id"],
        part=data["part"],
        status=later_status(row["status"], data["status"]),
        sent_at=at,
        updated_at=at,
    )
    if early is not None:
        row["status"] = later_status(row["status"], early["status"])
        for column in ("delivered_at", "read_at", "failed_at", "error_code", "error_message"):
            if early[column] is not None:
                row[column] = early[column]
    rows.put("message_history", row)


def _status(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    sid = data["message_sid"]
    row = rows.get("message_history", sid)
    if row is None:
        row = {**_bare(sid, phone, record), "message_sid": sid, "status": None}
    status = data["status"]
    at = time_of(data["at"])
    row["status"] = later_status(row["status"], status)
    if status in _TIME_OF_STATUS and row[_TIME_OF_STATUS[status]] is None:
        row[_TIME_OF_STATUS[status]] = at
    if status in FAILED_STATUSES:
        row["failed_at"] = row["failed_at"] or at
        row["error_code"], row["error_message"] = fitting_code(
            data.get("error_code"), data.get("error_message")
        )
    row["updated_at"] = at
    rows.put("message_history", row)


_BLANK: Row = dict.fromkeys(MESSAGES.column_names)


def _empty(message_id: str, phone: str, record: Recorded) -> Row:
    row = _BLANK.copy()
    row.update(message_id=message_id, phone=phone, media_count=0, position=record.position)
    return row


def _bare(message_id: str, phone: str, record: Recorded) -> Row:
    """An outbound row for a message whose request this projection never saw."""
    return _empty(message_id, phone, record) | {"direction": "outbound", "status": "requested"}


def _phone(phone: str) -> tuple[str, Key]:
    return ("history_phones", (phone,))


def _message(key: str) -> tuple[str, Key]:
    return ("message_history", (key,))


def _parts(data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    return [_message(part_id(data["reply_id"], i)) for i in range(part_count(data))]


HISTORY = Projection(
    "history",
    1,
    (MESSAGES, PHONES),
    {
        "CallCompleted": Rule(_call_completed, lambda phone, _: [_phone(phone)]),
        "MessageReceived": Rule(
            _received, lambda phone, data: [_phone(phone), _message(data["message_sid"])]
        ),
        "ReplyRequested": Rule(_requested, lambda phone, data: [_phone(phone), *_parts(data)]),
        "ReplySent": Rule(
            _sent,
            lambda _, data: [
                _message(part_id(data["reply_id"], data["part"])),
                _message(data["message_sid"]),
            ],
        ),
        "ReplyFailed": Rule(
            _failed, lambda _, data: [_message(part_id(data["reply_id"], data["part"]))]
        ),
        "DeliveryStatusChanged": Rule(_status, lambda _, data: [_message(data["message_sid"])]),
        "ReplyWithdrawn": Rule(
            _withdrawn,
            lambda _, data: [_message(part_id(data["reply_id"], p)) for p in data["parts"]],
        ),
    },
    subject=phone_of,
)
