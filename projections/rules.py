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

PHONE_CATEGORY: Final = "phone"

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


def phone_of(record: Recorded) -> str | None:
    """The phone whose conversation this record belongs to (None for other streams)."""
    category, _, ident = record.stream.partition("-")
    return ident if category == PHONE_CATEGORY else None


def time_of(value: Any) -> datetime | None:
    """An event's ISO 8601 time as an aware UTC datetime (None stays None)."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if parsed.tzinfo is UTC:
        return parsed
    if parsed.tzinfo is None:  # the codec refuses naive times; be safe with old rows
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


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
