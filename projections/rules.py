"""Rules several read models share: whose event it is, when it happened, message statuses.

Folds read ``record.data`` directly rather than decoding every record into its event class:
a rebuild folds a million events and cattrs would be most of its cost. The field names are
those of the classes in ``events.conversation`` and ``events.calls``; the tests fold events
built from those classes, so a renamed field fails there.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from projections.model import Recorded

#: The streams of one phone's conversation: ``phone-+E164`` and ``delivery-+E164`` (its
#: delivery statuses, kept out of the conversation's stream; see ``events.conversation``).
CONVERSATION_CATEGORIES: Final = frozenset({"phone", "delivery"})

#: How far a status has come. A status callback can arrive late or out of order (Twilio
#: does not promise order), so a message's status only ever moves up this ladder;
#: failures end it.
STATUS_RANK: Final[Mapping[str, int]] = {
    "requested": 0,
    "accepted": 1,
    "scheduled": 1,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "read": 5,
    "failed": 6,
    "undelivered": 6,
    "canceled": 6,
}
FAILED_STATUSES: Final = frozenset({"failed", "undelivered", "canceled"})


#: Memos of the two questions every read model asks of nearly every event: whose phone
#: (a phone's events come a dozen to a page) and when (the three read models fold the
#: same events, so a time is parsed two or three times within a page of ~20,000
#: events). Plain functions of their text; bounded, emptied when full.
_PHONES: dict[str, str] = {}
_PARSED: dict[str, datetime] = {}
_MEMO_MAX: Final = 65_536


def phone_of(record: Recorded) -> str | None:
    """The phone whose conversation this record belongs to: its phone or delivery stream's
    (None for other streams)."""
    stream = record.stream
    phone = _PHONES.get(stream)
    if phone is None:
        category, _, ident = stream.partition("-")
        phone = ident if category in CONVERSATION_CATEGORIES else ""  # never empty
        if len(_PHONES) >= _MEMO_MAX:
            _PHONES.clear()
        _PHONES[stream] = phone
    return phone or None


def time_of(value: Any) -> datetime | None:
    """An event's ISO 8601 time as an aware UTC datetime (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        known = _PARSED.get(value)
        if known is not None:
            return known
        parsed = _utc(datetime.fromisoformat(value))
        if len(_PARSED) >= _MEMO_MAX:
            _PARSED.clear()
        _PARSED[value] = parsed
        return parsed
    return _utc(value)


def _utc(parsed: datetime) -> datetime:
    if parsed.tzinfo is UTC:
        return parsed
    if parsed.tzinfo is None:  # the codec refuses naive times; be safe with old rows
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def hour_of(moment: datetime) -> datetime:
    # As ``moment.replace(minute=0, second=0, microsecond=0)``, at half its cost.
    return datetime(
        moment.year, moment.month, moment.day, moment.hour, 0, 0, 0, moment.tzinfo, fold=moment.fold
    )


def part_id(reply_id: str, part: int) -> str:
    """The id of one part of a reply before Twilio gave it a MessageSid."""
    return f"{reply_id}/{part}"


def part_count(data: Mapping[str, Any]) -> int:
    """How many messages a ``ReplyRequested`` sends (a template is one)."""
    return 1 if data.get("template") is not None else len(data.get("parts") or ())


def later_status(current: str | None, reported: str) -> str:
    """The status a message has after ``reported``, given it had ``current``."""
    if current is None:
        return reported
    return reported if STATUS_RANK.get(reported, 1) > STATUS_RANK.get(current, 1) else current


def seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


#: What an ``int`` column holds: PostgreSQL's bigint, SQLite's INTEGER (both 64 bits).
INT_COLUMN_MIN: Final = -(2**63)
INT_COLUMN_MAX: Final = 2**63 - 1


def fitting_code(code: Any, message: str | None) -> tuple[int | None, str | None]:
    """A Twilio error code as an ``int`` column can hold it, and the message to keep with it.

    The log is immutable and holds codes recorded before the webhook checked them: one
    was 99999999999999999999999, which PostgreSQL refused ("value out of int64 range")
    every time the history and metrics tried to write it. A code that is not a whole
    number in the column's range is kept in the message text instead, and the column
    holds None: the read model still shows what Twilio sent, and goes on.
    """
    if code is None or (type(code) is int and INT_COLUMN_MIN <= code <= INT_COLUMN_MAX):
        return code, message
    raw = str(code)
    if len(raw) > 40:
        raw = raw[:39] + "…"
    note = f"error code {raw}"
    return None, f"{message} ({note})" if message else note
