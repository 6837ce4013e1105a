"""Twilio's JSON, as plain functions over values: a Message resource, an error body, and
what counts as "this is the message we meant to send" when reconciling an outbox intent.

The sender (``clients.twilio.sender``) does the I/O; these rules are tested on values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import attrs

from events.phones import InvalidPhone, normalise_phone


@attrs.frozen
class SentMessage:
    """A message as Twilio reports it (on create, fetch and list).

    ``to`` is the recipient in E.164 (``+15551234567``), not Twilio's ``whatsapp:`` form,
    so it compares directly with the phone actor's identity.
    """

    sid: str
    status: str
    to: str
    body: str | None
    date_created: datetime | None
    error_code: int | None
    error_message: str | None = None
    date_sent: datetime | None = None


@attrs.frozen
class TwilioErrorInfo:
    """What a Twilio error response says: its code (21211, 20003...) and message."""

    code: int | None
    message: str
    more_info: str | None = None


class MalformedResponse(ValueError):
    """A Twilio response body that is not the JSON it should be."""


def parse_twilio_date(value: Any) -> datetime | None:
    """Twilio's RFC 2822 dates (``Thu, 24 Aug 2023 05:01:45 +0000``); None stays None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MalformedResponse(f"expected an RFC 2822 date string, got {value!r}")
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError) as exc:
        raise MalformedResponse(f"unreadable date {value!r}") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _optional_int(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise MalformedResponse(f"{field} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise MalformedResponse(f"{field} must be an integer, got {value!r}")


def _optional_str(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise MalformedResponse(f"{field} must be a string, got {value!r}")


def _phone_or_raw(value: str) -> str:
    try:
        return normalise_phone(value)
    except InvalidPhone:
        return value


def parse_message(payload: Any) -> SentMessage:
    """A Twilio Message resource (decoded JSON) as a `SentMessage`.

    Raises:
        MalformedResponse: the payload is not a message (no sid, wrong types...).
    """
    if not isinstance(payload, Mapping):
        raise MalformedResponse(
            f"expected a JSON object for a message, got {type(payload).__name__}"
        )
    sid = payload.get("sid")
    status = payload.get("status")
    to = payload.get("to")
    if not isinstance(sid, str) or not sid:
        raise MalformedResponse("message has no sid")
    if not isinstance(status, str):
        raise MalformedResponse(f"message {sid} has no status")
    if not isinstance(to, str):
        raise MalformedResponse(f"message {sid} has no recipient")
    return SentMessage(
        sid=sid,
        status=status,
        to=_phone_or_raw(to),
        body=_optional_str(payload.get("body"), "body"),
        date_created=parse_twilio_date(payload.get("date_created")),
        error_code=_optional_int(payload.get("error_code"), "error_code"),
        error_message=_optional_str(payload.get("error_message"), "error_message"),
        date_sent=parse_twilio_date(payload.get("date_sent")),
    )


def parse_error(status: int, text: str) -> TwilioErrorInfo:
    """Read a Twilio error body: the legacy ``{code, message, more_info, status}`` shape,
    or RFC 9457 problem details (``{type, title, detail, code}``); anything else becomes
    a message naming the HTTP status and a short excerpt of the body.
    """
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = None
    if isinstance(payload, Mapping):
        code = payload.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = payload.get("message") or payload.get("detail") or payload.get("title")
        more_info = payload.get("more_info") or payload.get("type")
        return TwilioErrorInfo(
            code=code,
            message=str(message) if message else f"HTTP {status}",
            more_info=str(more_info) if isinstance(more_info, str) else None,
        )
    excerpt = " ".join(text.split())[:200]
    return TwilioErrorInfo(
        code=None, message=f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    )


def _comparable_body(body: str) -> str:
    """Bodies compare modulo line endings and surrounding whitespace (Twilio may trim)."""
    return body.replace("\r\n", "\n").strip()


def message_matches(
    payload: Mapping[str, Any],
    *,
    to_phone: str,
    from_address: str,
    since: datetime,
    body: str | None = None,
    content_sid: str | None = None,
) -> bool:
    """Whether a listed Twilio message is the one an outbox intent meant to send.

    A match is outbound, to ``to_phone``, from our sender, created at or after ``since``
    (Twilio's dates have whole seconds, so ``since`` is truncated to the second), and, when
    given, carries the same body (modulo line endings and surrounding whitespace) or the
    same template. Twilio's Message resource has no Content SID field, so a template is
    recognised by ``content_sid`` when the listing carries one and otherwise by ``body``
    (the rendered text) if the caller gives it; with neither, any outbound message in the
    window counts, which is right for the phone actor: it is the only sender to that phone
    and reconciles its latest intent.
    """
    direction = payload.get("direction")
    if isinstance(direction, str) and not direction.startswith("outbound"):
        return False
    to = payload.get("to")
    sender = payload.get("from")
    if not isinstance(to, str) or _phone_or_raw(to) != normalise_phone(to_phone):
        return False
    if not isinstance(sender, str) or _phone_or_raw(sender) != _phone_or_raw(from_address):
        return False
    try:
        created = parse_twilio_date(payload.get("date_created"))
    except MalformedResponse:
        return False
    if since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    if created is None or created < since.replace(microsecond=0):
        return False
    if content_sid is not None and "content_sid" in payload:
        if payload.get("content_sid") != content_sid:
            return False
    elif body is not None:
        listed = payload.get("body")
        if not isinstance(listed, str) or _comparable_body(listed) != _comparable_body(body):
            return False
    return True


def date_sent_filter(since: datetime) -> str:
    """The ``DateSent>=`` value for ``since``: the UTC calendar day (Twilio filters by day)."""
    if since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    return since.astimezone(UTC).date().isoformat()


def dedupe_by_sid(messages: Sequence[SentMessage]) -> list[SentMessage]:
    """Keep the first of each SID (pages can overlap when messages arrive while paging)."""
    seen: set[str] = set()
    unique: list[SentMessage] = []
    for message in messages:
        if message.sid not in seen:
            seen.add(message.sid)
            unique.append(message)
    return unique
