"""The opt-out list: one row per phone that ever opted out or could not receive.

``state`` is where the phone stands after its last such event:

- ``opted_out``: the person sent an opt-out keyword (``keyword``); nothing is sent to them;
- ``unreachable``: Twilio said they cannot or will not receive (``error_code``, ``reason``:
  21610, 63014, 63024, 63003; ``clients.twilio.recipients``); nothing is sent to them until
  they write again;
- ``opted_in``: they opted out, then sent an opt-in keyword;
- ``reachable``: they could not receive, then wrote to us (which shows they can).

``aftercall optouts`` and ``GET /api/optouts`` list the first two (``--all``/``?all=true``:
every row), for export to whatever else sends to these people. The phone actor does not
read this table: it decides from its own stream (``followup.conversation``), where the same
events are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from projections.model import Key, Projection, Recorded, Row, RowSet, Rule, Table, columns
from projections.rules import fitting_code, phone_of, time_of

OPTOUTS = Table(
    "optouts",
    columns(
        "phone text, state text, keyword text, error_code int, reason text, since time,"
        " message_sid text, updated_at time, position int"
    ),
    key=("phone",),
    indexes=(("state", "since"),),
)
#: The states in which nothing is sent to the phone.
BLOCKED: Final = ("opted_out", "unreachable")
STATES: Final = ("opted_out", "unreachable", "opted_in", "reachable")


def _row(rows: RowSet, phone: str) -> Row:
    found = rows.get("optouts", phone)
    if found is not None:
        return found
    row: Row = dict.fromkeys(OPTOUTS.column_names)
    row["phone"] = phone
    return row


def _put(rows: RowSet, row: Row, record: Recorded) -> None:
    row["updated_at"] = record.recorded_at
    row["position"] = record.position
    rows.put("optouts", row)


def _opted_out(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    row = _row(rows, phone)
    row.update(
        state="opted_out",
        keyword=data["keyword"],
        reason=f"wrote {data['keyword'].upper()}",
        since=time_of(data["at"]),
        message_sid=data["message_sid"],
    )
    _put(rows, row, record)


def _opted_in(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    row = _row(rows, phone)
    row.update(
        state="opted_in",
        keyword=data["keyword"],
        reason=f"wrote {data['keyword'].upper()}",
        since=time_of(data["at"]),
        message_sid=data["message_sid"],
    )
    _put(rows, row, record)


def _unreachable(rows: RowSet, phone: str, record: Recorded) -> None:
    data = record.data
    row = _row(rows, phone)
    code, meaning = fitting_code(data.get("error_code"), data.get("meaning"))
    row.update(error_code=code, reason=meaning, message_sid=data.get("message_sid"))
    if row["state"] != "opted_out":  # the person's own word stands; Twilio's adds to it
        row.update(state="unreachable", keyword=None, since=time_of(data["at"]))
    _put(rows, row, record)


def _wrote(rows: RowSet, phone: str, record: Recorded) -> None:
    """A message from a phone Twilio said could not receive: it can now."""
    row = rows.get("optouts", phone)
    if row is None or row["state"] != "unreachable":
        return
    row.update(state="reachable", since=time_of(record.data["received_at"]))
    _put(rows, row, record)


def _this_phone(phone: str, _data: Mapping[str, Any]) -> list[tuple[str, Key]]:
    return [("optouts", (phone,))]


OPTOUTS_PROJECTION = Projection(
    "optouts",
    1,
    (OPTOUTS,),
    {
        "OptedOut": Rule(_opted_out, _this_phone),
        "OptedIn": Rule(_opted_in, _this_phone),
        "RecipientUnreachable": Rule(_unreachable, _this_phone),
        "MessageReceived": Rule(_wrote, _this_phone),
    },
    subject=phone_of,
)
