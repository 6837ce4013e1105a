"""Twilio's WhatsApp wire protocol as plain functions over values (no I/O, no clock).

Everything here follows docs/reference/twilio-whatsapp.md: the create-message
checks and their error codes (§3), the Message resource JSON (§3.2), the list envelope,
the inbound webhook form (§1.2), the status-callback form (§4), the TwiML a webhook
answers with (§1.3) and the request signature (§2). The stand-in's server and simulated
users call these; tests call them directly.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from email.utils import format_datetime
from urllib.parse import urlencode
from xml.etree import ElementTree

import attrs
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from sandbox.twilio._values import (
    API_VERSION,
    MAX_BODY_CHARS,
    WINDOW_SECONDS,
    ApiError,
    MessageRecord,
    Template,
)

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


def new_sid(prefix: str) -> str:
    """A Twilio-shaped id: two-letter prefix and 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def e164(phone: str) -> str:
    """``+E164`` from ``+E164`` or ``whatsapp:+E164``; ValueError for anything else."""
    number = phone.removeprefix("whatsapp:")
    if not _E164.fullmatch(number):
        raise ValueError(f"not an E.164 phone number: {phone!r}")
    return number


def whatsapp_address(phone: str) -> str:
    return "whatsapp:" + e164(phone)


def rfc2822(moment: datetime) -> str:
    """Twilio's date format, ``Thu, 24 Aug 2023 05:01:45 +0000`` (always UTC)."""
    return _rfc2822(moment.astimezone(UTC).replace(microsecond=0))


@functools.lru_cache(maxsize=64)
def _rfc2822(second: datetime) -> str:
    # Every message renders two or three dates, mostly of the same second, and the email
    # module's formatter is the costliest part of a Messages API answer.
    return format_datetime(second)


def sign(auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """``X-Twilio-Signature`` for a form POST to ``url`` (reference §2.1).

    Goes through twilio-python's own ``RequestValidator`` so the stand-in signs exactly as
    the library the app validates with; a MultiDict keeps repeated names (``MediaUrl``).
    """
    if isinstance(params, Mapping):  # one value per name: the library takes the dict itself
        return str(RequestValidator(auth_token).compute_signature(url, dict(params)))
    return str(RequestValidator(auth_token).compute_signature(url, MultiDict(list(params))))


# --------------------------------------------------------------------------- create


@attrs.frozen
class CreateRequest:
    """A create-message request that passed every synchronous check."""

    to: str
    from_: str
    body: str
    media_urls: tuple[str, ...]
    content_sid: str | None
    messaging_service_sid: str | None
    status_callback: str | None

    @property
    def is_free_form(self) -> bool:
        """Free-form text or media: allowed only inside the 24-hour window."""
        return self.content_sid is None


def _bad_request(code: int, message: str) -> ApiError:
    return ApiError(status=400, code=code, message=message)


def check_create(
    form: Mapping[str, Sequence[str]], *, senders: Iterable[str], templates: Mapping[str, Template]
) -> CreateRequest | ApiError:
    """Apply Twilio's synchronous checks to a create-message form, in Twilio's order.

    ``form`` maps each name to all its values (``MediaUrl`` repeats). ``senders`` are the
    WhatsApp addresses this account may send from. The 24-hour window is not checked here:
    Twilio accepts such a message and fails it afterwards (63016).
    """

    def one(name: str) -> str | None:
        values = form.get(name)
        return values[0] if values else None

    to = one("To")
    if not to:
        return _bad_request(21604, "A 'To' phone number is required.")
    from_ = one("From")
    service = one("MessagingServiceSid")
    sender_list = list(senders)
    if service is not None and not _MESSAGING_SERVICE_SID.fullmatch(service):
        return _bad_request(21701, f"The Messaging Service Sid {service} is invalid.")
    if not from_ and service is None:
        return _bad_request(21603, "A 'From' phone number is required.")
    if not from_:
        from_ = sender_list[0]
    if not from_.startswith("whatsapp:") or from_ not in sender_list:
        return _bad_request(
            63007, "Twilio could not find a Channel with the specified From address"
        )
    if not to.startswith("whatsapp:"):
        if _E164.fullmatch(to):
            return _bad_request(
                21910,
                "Invalid From and To pair. From and To should be of the same channel",
            )
        return _bad_request(21211, f"The 'To' number {to} is not a valid phone number.")
    try:
        e164(to)
    except ValueError:
        return _bad_request(21211, f"The 'To' number {to} is not a valid phone number.")

    status_callback = one("StatusCallback")
    if status_callback is not None and not re.match(r"https?://[^_/]+(/|$)", status_callback):
        return _bad_request(21609, f"The StatusCallback URL {status_callback} is not valid.")

    content_sid = one("ContentSid")
    variables_text = one("ContentVariables")
    media_urls = tuple(form.get("MediaUrl", ()))
    body = one("Body") or ""

    if variables_text is not None and content_sid is None:
        return _bad_request(21654, "ContentVariables parameter is only valid with a ContentSid.")
    if content_sid is not None:
        template = templates.get(content_sid)
        if template is None:
            return _bad_request(21655, f"The ContentSid {content_sid} is invalid.")
        variables = _parse_variables(variables_text)
        if variables is None:
            return _bad_request(21656, "The ContentVariables Parameter is invalid.")
        rendered = render_template(template.body, variables)
        if rendered is None:
            return _bad_request(
                21656, "The ContentVariables Parameter is invalid: a placeholder has no value."
            )
        body = rendered
        media_urls = ()
    elif not body and not media_urls:
        return _bad_request(21602, "Message body is required.")

    if len(body) > MAX_BODY_CHARS:
        return _bad_request(
            21617, "The concatenated message body exceeds the 1600 character limit."
        )
    return CreateRequest(
        to=to,
        from_=from_,
        body=body,
        media_urls=media_urls,
        content_sid=content_sid,
        messaging_service_sid=service,
        status_callback=status_callback,
    )


def _parse_variables(text: str | None) -> dict[str, str] | None:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or len(value) > 100:
        return None
    return {str(key): str(item) for key, item in value.items()}


def render_template(body: str, variables: Mapping[str, str]) -> str | None:
    """``{{1}}``-style placeholders filled from ``variables``; None if one has no value."""
    missing = [name for name in _PLACEHOLDER.findall(body) if name not in variables]
    if missing:
        return None
    return _PLACEHOLDER.sub(lambda match: variables[match.group(1)], body)


def window_open(last_inbound: float | None, now: float) -> bool:
    """Is the user's customer-service window open (an inbound message in the last 24 h)?"""
    return last_inbound is not None and now - last_inbound < WINDOW_SECONDS


# --------------------------------------------------------------------------- resources


def messages_path(account_sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}/Messages"


def message_json(record: MessageRecord) -> dict[str, object]:
    """The Message resource exactly as Twilio's REST API spells it (reference §3.2)."""
    base = messages_path(record.account_sid)
    return {
        "account_sid": record.account_sid,
        "api_version": API_VERSION,
        "body": record.body,
        "date_created": rfc2822(record.date_created),
        "date_sent": rfc2822(record.date_sent) if record.date_sent else None,
        "date_updated": rfc2822(record.date_updated),
        "direction": record.direction,
        "error_code": record.error_code,
        "error_message": record.error_message,
        "from": record.from_,
        "messaging_service_sid": record.messaging_service_sid,
        "num_media": str(len(record.media_urls)),
        "num_segments": "1",
        "price": None,
        "price_unit": None,
        "sid": record.sid,
        "status": record.status,
        "subresource_uris": {"media": f"{base}/{record.sid}/Media.json"},
        "to": record.to,
        "uri": f"{base}/{record.sid}.json",
    }


@attrs.frozen
class ListQuery:
    """The filters and paging of ``GET …/Messages.json``."""

    to: str | None = None
    from_: str | None = None
    date_sent: str | None = None
    date_sent_before: str | None = None
    date_sent_after: str | None = None
    page: int = 0
    page_size: int = 50

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> ListQuery | ApiError:
        try:
            page = int(args.get("Page", "0"))
            page_size = int(args.get("PageSize", "50"))
        except ValueError:
            return _bad_request(20001, "Page and PageSize must be integers.")
        if page < 0 or not 1 <= page_size <= 1000:
            return _bad_request(20001, "PageSize must be between 1 and 1000.")
        query = cls(
            to=args.get("To"),
            from_=args.get("From"),
            date_sent=args.get("DateSent"),
            date_sent_before=args.get("DateSent<"),
            date_sent_after=args.get("DateSent>"),
            page=page,
            page_size=page_size,
        )
        for text in (query.date_sent, query.date_sent_before, query.date_sent_after):
            if text is not None and _parse_when(text) is None:
                return _bad_request(20001, f"Invalid DateSent filter: {text}")
        return query

    def filters(self) -> list[tuple[str, str]]:
        named = [
            ("To", self.to),
            ("From", self.from_),
            ("DateSent", self.date_sent),
            ("DateSent<", self.date_sent_before),
            ("DateSent>", self.date_sent_after),
        ]
        return [(name, value) for name, value in named if value is not None]


def _parse_when(text: str) -> date | datetime | None:
    """``YYYY-MM-DD`` (a whole day) or an ISO-8601 UTC datetime (what twilio-python sends)."""
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def _compare(sent: datetime, when: date | datetime) -> int:
    """-1, 0 or 1 as ``sent`` is before, on, or after ``when`` (a day or a second)."""
    if isinstance(when, datetime):
        second = sent.replace(microsecond=0)
        return (second > when) - (second < when)
    day = sent.astimezone(UTC).date()
    return (day > when) - (day < when)


def matches(record: MessageRecord, query: ListQuery) -> bool:
    if query.to is not None and record.to != query.to:
        return False
    if query.from_ is not None and record.from_ != query.from_:
        return False
    bounds = [
        (query.date_sent, {0}),
        (query.date_sent_before, {-1, 0}),
        (query.date_sent_after, {0, 1}),
    ]
    for text, accepted in bounds:
        if text is None:
            continue
        when = _parse_when(text)
        if when is None or record.date_sent is None:
            return False
        if _compare(record.date_sent, when) not in accepted:
            return False
    return True


def page_json(
    records: Sequence[MessageRecord], query: ListQuery, account_sid: str
) -> dict[str, object]:
    """One page of the list, newest first, in Twilio's page envelope.

    ``next_page_uri`` carries the filters, so twilio-python's ``list()`` follows it.
    """
    chosen = sorted(
        (record for record in records if matches(record, query)),
        key=lambda record: record.date_created,
        reverse=True,
    )
    start = query.page * query.page_size
    page = chosen[start : start + query.page_size]
    path = messages_path(account_sid) + ".json"

    def uri(page_number: int) -> str:
        params = [*query.filters(), ("PageSize", str(query.page_size)), ("Page", str(page_number))]
        return f"{path}?{urlencode(params)}"

    has_next = start + query.page_size < len(chosen)
    return {
        "end": start + len(page) - 1 if page else start,
        "first_page_uri": uri(0),
        "messages": [message_json(record) for record in page],
        "next_page_uri": uri(query.page + 1) if has_next else None,
        "page": query.page,
        "page_size": query.page_size,
        "previous_page_uri": uri(query.page - 1) if query.page > 0 else None,
        "start": start,
        "uri": uri(query.page),
    }


# --------------------------------------------------------------------------- to the app


def message_type(media_types: Sequence[str]) -> str:
    """``MessageType`` of an inbound WhatsApp message (``text``, ``image``, ``document``…)."""
    if not media_types:
        return "text"
    major = media_types[0].split("/", 1)[0]
    return major if major in {"image", "video", "audio"} else "document"


def inbound_params(
    *,
    sid: str,
    account_sid: str,
    from_phone: str,
    to: str,
    body: str,
    profile_name: str,
    media: Sequence[tuple[str, str]] = (),
) -> dict[str, str]:
    """The form Twilio posts for an inbound WhatsApp message (reference §1.2).

    ``media`` is ``(content_type, url)`` per attachment.
    """
    params = {
        "SmsMessageSid": sid,
        "NumMedia": str(len(media)),
        "ProfileName": profile_name,
        "MessageType": message_type([content_type for content_type, _ in media]),
        "SmsSid": sid,
        "WaId": e164(from_phone).lstrip("+"),
        "SmsStatus": "received",
        "Body": body,
        "To": to,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": whatsapp_address(from_phone),
        "ApiVersion": API_VERSION,
    }
    for index, (content_type, url) in enumerate(media):
        params[f"MediaContentType{index}"] = content_type
        params[f"MediaUrl{index}"] = url
    return params


def status_params(record: MessageRecord, *, channel_install_sid: str) -> dict[str, str]:
    """The form of a WhatsApp status callback for the record's current status (§4)."""
    params = {
        "SmsSid": record.sid,
        "SmsStatus": record.status,
        "MessageStatus": record.status,
        "ChannelToAddress": e164(record.to),
        "To": record.to,
        "ChannelPrefix": "whatsapp",
        "MessageSid": record.sid,
        "AccountSid": record.account_sid,
        "From": record.from_,
        "ApiVersion": API_VERSION,
        "ChannelInstallSid": channel_install_sid,
    }
    if record.status == "sent":
        params["StructuredMessage"] = "false"
    if record.status in {"delivered", "read"}:
        params["EventType"] = record.status.upper()
    if record.messaging_service_sid is not None:
        params["MessagingServiceSid"] = record.messaging_service_sid
    if record.error_code is not None:
        params["ErrorCode"] = str(record.error_code)
        params["ErrorMessage"] = record.error_message or ""
        params["ChannelStatusMessage"] = record.error_message or ""
    return params


@attrs.frozen
class TwimlReply:
    """A ``<Message>`` verb from the webhook's answer."""

    body: str
    media_urls: tuple[str, ...] = ()
    status_callback: str | None = None


class TwimlError(ValueError):
    """The answer was not TwiML (Twilio's debugger: 12100 Document parse failure)."""


def parse_twiml(text: str) -> list[TwimlReply]:
    """The ``<Message>`` replies in a webhook's TwiML answer; an empty answer has none."""
    if not text.strip():
        return []
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise TwimlError(str(exc)) from exc
    if root.tag != "Response":
        raise TwimlError(f"root element is <{root.tag}>, not <Response>")
    replies = []
    for verb in root.iter("Message"):
        body_element = verb.find("Body")
        body = (verb if body_element is None else body_element).text or ""
        media = tuple((element.text or "").strip() for element in verb.findall("Media"))
        replies.append(
            TwimlReply(
                body=body.strip(), media_urls=media, status_callback=verb.get("statusCallback")
            )
        )
    return replies
