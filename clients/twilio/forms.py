"""Twilio webhook forms -> events, and the signature check, as plain functions.

The webhook handlers face the internet: they check the signature against the URL Twilio
called (the configured public base URL, never the request's Host, which a proxy rewrites),
then turn the form into one event or a clear reason why not. Twilio adds parameters without
notice, so unknown ones are accepted (and covered by the signature).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime
from urllib.parse import parse_qsl

import attrs
from twilio.request_validator import RequestValidator

from events.conversation import DeliveryStatusChanged, MediaItem, MessageReceived
from events.phones import InvalidPhone, identity_phone, normalise_phone

#: Twilio documents inbound bodies of up to 1600 characters; leave room for odd encodings.
MAX_BODY = 4096
MAX_MEDIA = 10
#: Twilio's forms have a few dozen fields; a form with hundreds is not Twilio's.
MAX_FIELDS = 200
#: No field of Twilio's is longer than a message body (MediaUrl, ErrorMessage: a few hundred).
MAX_VALUE = MAX_BODY
#: Twilio's error codes are five-digit numbers (twilio.com/docs/api/errors); six digits of
#: room, and anything beyond is not Twilio's (it would not fit the read models' columns).
MAX_ERROR_CODE = 999_999
#: Statuses Twilio reports in callbacks for outbound messages.
KNOWN_STATUSES = frozenset(
    {
        "accepted", "scheduled", "canceled", "queued", "sending", "sent", "failed",
        "delivered", "undelivered", "receiving", "received", "read", "partially_delivered",
    }
)  # fmt: skip


class FormError(ValueError):
    """A webhook form we cannot record; the message is the HTTP 400 reason."""


@attrs.frozen
class Form:
    """The POSTed parameters: each name with all its values (Twilio may repeat none today,
    but the signature covers every value)."""

    items: Mapping[str, Sequence[str]]

    def get(self, name: str) -> str | None:
        values = self.items.get(name)
        return values[0] if values else None

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None or value == "":
            raise FormError(f"missing {name}")
        return value


def parse_form(body: bytes) -> Form:
    """An ``application/x-www-form-urlencoded`` body, decoded as Twilio encodes it (UTF-8,
    ``+`` for a space), every value of a repeated name kept.

    A plain function over the bytes rather than the web framework's form parser: on the
    hottest path of the service it is the difference between ~20 µs and ~200 µs, and the
    signature check needs exactly the decoded pairs, nothing more.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("the form is not UTF-8 (Twilio sends UTF-8)") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:
        raise FormError(f"a Twilio form has at most {MAX_FIELDS} fields") from None
    items: dict[str, list[str]] = {}
    for name, value in pairs:
        if len(value) > MAX_VALUE:
            raise FormError(f"{name[:40]!r} is {len(value)} characters; the limit is {MAX_VALUE}")
        if "\x00" in name or "\x00" in value:
            # Twilio never sends a NUL, and PostgreSQL's jsonb cannot store one.
            raise FormError(f"{name[:40]!r} contains a NUL character")
        values = items.get(name)
        if values is None:
            items[name] = [value]
        else:
            values.append(value)
    return Form(items)


class _ValidatorParams(dict[str, list[str]]):
    """What RequestValidator expects for repeated values: a mapping with ``getlist``."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def signature_is_valid(auth_token: str, url: str, form: Form, signature: str) -> bool:
    """Twilio's HMAC-SHA1 over the URL it called plus the sorted parameters.

    twilio-python's ``validate`` computes two signatures every time (the URL with and
    without its port: "sig generation on back end is inconsistent"). The URL exactly as
    configured is tried first, with the library's own ``compute_signature``; a match there
    is a match ``validate`` would find too. Only a mismatch pays for the full check.
    """
    params = _ValidatorParams({name: list(values) for name, values in form.items.items()})
    validator = _validator(auth_token)
    if hmac.compare_digest(validator.compute_signature(url, params), signature):
        return True
    return bool(validator.validate(url, params, signature))


@functools.lru_cache(maxsize=4)
def _validator(auth_token: str) -> RequestValidator:
    return RequestValidator(auth_token)


def message_received(form: Form, now: datetime) -> MessageReceived:
    """An inbound WhatsApp message: the person's identity as ``phone``, and the number they
    wrote from as ``address`` when it is another form of it (``events.phones``)."""
    sid = form.require("MessageSid")
    _check_sid(sid, "MessageSid", ("SM", "MM"))
    address = _phone(form.require("From"), "From")
    phone = identity_phone(address)
    body = form.get("Body") or ""
    if len(body) > MAX_BODY:
        raise FormError(f"Body is {len(body)} characters; the limit is {MAX_BODY}")
    raw_count = form.get("NumMedia") or "0"
    if not _is_decimal(raw_count) or int(raw_count) > MAX_MEDIA:
        raise FormError(
            f"NumMedia must be a whole number from 0 to {MAX_MEDIA}, not {raw_count[:40]!r}"
        )
    count = int(raw_count)
    media = tuple(
        MediaItem(
            content_type=form.get(f"MediaContentType{i}") or "application/octet-stream",
            url=form.require(f"MediaUrl{i}"),
        )
        for i in range(count)
    )
    if not body.strip() and not media:
        # Locations, contacts, reactions... arrive with an empty Body: treat as media-like.
        kind = form.get("MessageType") or "unknown"
        media = (MediaItem(content_type=f"whatsapp/{kind}", url=""),)
    return MessageReceived(
        message_sid=sid,
        phone=phone,
        body=body,
        received_at=now,
        profile_name=form.get("ProfileName"),
        media=media,
        address=address if address != phone else None,
    )


def delivery_status(form: Form, now: datetime) -> tuple[str, DeliveryStatusChanged]:
    """(phone, event) for a status callback about a message we sent."""
    sid = form.require("MessageSid")
    _check_sid(sid, "MessageSid", ("SM", "MM"))
    status = form.get("MessageStatus") or form.require("SmsStatus")
    if status not in KNOWN_STATUSES:
        raise FormError(f"unknown MessageStatus {status!r}")
    phone = identity_phone(_phone(form.require("To"), "To"))
    raw_code = form.get("ErrorCode")
    code: int | None = None
    if raw_code and raw_code.isascii() and raw_code.isdigit():
        # The length first: a number of thousands of digits costs int() real time.
        if len(raw_code) > len(str(MAX_ERROR_CODE)) or int(raw_code) > MAX_ERROR_CODE:
            raise FormError(
                f"ErrorCode must be a Twilio error code (at most {MAX_ERROR_CODE}), "
                f"not {raw_code[:40]!r}"
            )
        code = int(raw_code)
    # Otherwise kept in the message: the sandbox once sent "InvalidSandboxRequest".
    message = form.get("ErrorMessage") or form.get("ChannelStatusMessage")
    if raw_code and code is None:
        message = f"{raw_code}: {message}" if message else raw_code
    return phone, DeliveryStatusChanged(
        message_sid=sid, status=status, at=now, error_code=code, error_message=message or None
    )


def _is_decimal(raw: str) -> bool:
    """ASCII digits only, and few of them: ``int()`` alone also takes ``" 1_0 "`` and other
    scripts' digits, and a thousand-digit number costs it real time."""
    return 0 < len(raw) <= 12 and raw.isascii() and raw.isdigit()


def _phone(raw: str, field: str) -> str:
    try:
        return normalise_phone(raw)
    except InvalidPhone as exc:
        raise FormError(f"{field}: {exc}") from exc


def _check_sid(sid: str, field: str, prefixes: tuple[str, ...]) -> None:
    if len(sid) != 34 or not sid.startswith(prefixes) or not sid[2:].isalnum():
        raise FormError(f"{field} {sid[:40]!r} is not a Twilio message sid")


EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
