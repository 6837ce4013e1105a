"""The WhatsApp rules as plain functions over values: no sockets, no clock, no randomness.

`actors.whatsapp` does the I/O (the Twilio Messages API over httpx); everything it decides
lives here so it can be tested exhaustively and read in one place:

- phone numbers: one canonical E.164 form (`normalise_phone`), because the phone is the
  actor's identity and the stream name, and Twilio speaks `whatsapp:+E164`;
- bodies: Twilio refuses more than 1600 characters (21617) and an empty body is never
  something a person should receive (`split_message`, `check_body`);
- template or text: outside the 24-hour window the configured template (`plan_reply`;
  the window itself is ``actors.conversation.in_service_window``);
- retry timing: exponential backoff with full jitter, and `Retry-After` honoured
  (`parse_retry_after`, `backoff_delay`);
- Twilio's JSON: messages (`parse_message`), errors (`parse_error`), and what counts as
  "this is the message we meant to send" when reconciling an outbox intent
  (`message_matches`).
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import attrs

from events.conversation import Template

#: Twilio's limit on ``Body``. Over it the create call fails with 21617.
BODY_LIMIT: Final = 1600
#: The prefix Twilio puts on WhatsApp addresses (``whatsapp:+15551234567``).
WHATSAPP_PREFIX: Final = "whatsapp:"
#: Twilio accepts at most this many ``ContentVariables``.
MAX_CONTENT_VARIABLES: Final = 100

_E164_DIGITS = re.compile(r"^[1-9][0-9]{6,14}$")
# Separators people and CRMs put inside phone numbers; anything else is refused.
_PHONE_NOISE = re.compile(r"[\s\-.()/]")
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")


class InvalidPhone(ValueError):
    """A phone number that cannot be turned into E.164 (``+`` and 7 to 15 digits)."""


class EmptyMessage(ValueError):
    """A body (or template variable) that is empty or whitespace only.

    Nothing empty is ever sent to Twilio (invariant 3): an empty agent answer must be
    replaced by the fallback message before it reaches the sender.
    """


class MessageTooLong(ValueError):
    """A single body over Twilio's 1600-character limit: split it with `split_message`."""


# ---------------------------------------------------------------------------------------
# Phones


def normalise_phone(raw: str) -> str:
    """Return the E.164 form (``+15551234567``) of a phone number or WhatsApp address.

    Accepts ``whatsapp:+1 (555) 123-4567``, ``+15551234567``, ``15551234567`` and the
    international ``00`` prefix. A number without a country code (``0612345678``) cannot
    be made E.164 without guessing the country, so it is refused rather than guessed.

    Raises:
        InvalidPhone: with the offending input and what was expected.
    """
    if not isinstance(raw, str):
        raise InvalidPhone(f"phone number must be a string, got {type(raw).__name__}")
    text = raw.strip()
    if text[: len(WHATSAPP_PREFIX)].lower() == WHATSAPP_PREFIX:
        text = text[len(WHATSAPP_PREFIX) :]
    text = _PHONE_NOISE.sub("", text)
    if text.startswith("+"):
        digits = text[1:]
    elif text.startswith("00"):
        digits = text[2:]
    else:
        digits = text
    if not digits.isascii() or not digits.isdigit():
        raise InvalidPhone(
            f"{raw!r} is not a phone number: expected E.164 like +15551234567 "
            "(digits, an optional leading + and separators only)"
        )
    if digits.startswith("0"):
        raise InvalidPhone(f"{raw!r} has no country code: expected E.164 like +15551234567")
    if not _E164_DIGITS.match(digits):
        raise InvalidPhone(
            f"{raw!r} has {len(digits)} digits: E.164 numbers have 7 to 15 digits "
            "including the country code"
        )
    return "+" + digits


def whatsapp_address(phone: str) -> str:
    """``whatsapp:+E164``, the address form Twilio wants in ``To`` and ``From``."""
    return WHATSAPP_PREFIX + normalise_phone(phone)


# ---------------------------------------------------------------------------------------
# Bodies


def body_length(text: str) -> int:
    """Length as Twilio's limit counts it, in UTF-16 code units.

    An emoji outside the Basic Multilingual Plane is one Python character but two UTF-16
    units. Counting units can only over-estimate a code-point count, so a part that fits
    here fits whichever way Twilio counts.
    """
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def check_body(body: str, limit: int = BODY_LIMIT) -> None:
    """Refuse a body Twilio must never receive: empty, whitespace only, or too long.

    Raises:
        EmptyMessage: the body is empty or whitespace only.
        MessageTooLong: the body is over ``limit`` (see `body_length`).
    """
    if not body.strip():
        raise EmptyMessage("refusing to send an empty or whitespace-only WhatsApp message")
    length = body_length(body)
    if length > limit:
        raise MessageTooLong(
            f"WhatsApp body is {length} characters, the limit is {limit}: split it first"
        )


# A sentence ends with terminal punctuation, optionally closed by quotes or brackets,
# and is followed by whitespace. Decimals ("3.5") and URLs ("a.b/c") are not endings.
_SENTENCE_END = re.compile(
    "[.!?\u2026\u3002\uff01\uff1f]+"  # . ! ? ellipsis, ideographic full stop, fullwidth ! ?
    "[\"'\u201d\u2019\u00bb)\\]]*"  # closing quotes and brackets
    "(?=\\s)"
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_LINE_BREAK = re.compile(r"\n")
_WHITESPACE = re.compile(r"\s")
# Characters that must not start a part: they belong to the character before them.
_JOINERS = frozenset({"\u200d", "\ufe0e", "\ufe0f"})


def split_message(text: str, limit: int = BODY_LIMIT) -> list[str]:
    """Split ``text`` into non-empty parts of at most ``limit`` (UTF-16 units) each.

    Cuts, in order of preference: a paragraph break in the second half of the room left,
    then the last sentence ending or line break, then the last whitespace, then a hard cut
    (never inside a character, and not before a combining mark or joiner when avoidable).
    Each part is stripped of surrounding whitespace; the text inside a part is untouched.
    Greedy, so the number of parts is small, and linear in the length of ``text``.

    Empty or whitespace-only text has no parts (``[]``): there is nothing to send, and the
    caller must choose what to say instead (the fallback message).

    Raises:
        ValueError: ``limit`` is below 2 (one character can take two UTF-16 units).
    """
    if limit < 2:
        raise ValueError(f"limit must be at least 2, got {limit}")
    parts: list[str] = []
    start, end_of_text = _skip_space(text, 0), len(text.rstrip())
    while start < end_of_text:
        window_end = _window_end(text, start, end_of_text, limit)
        fits = window_end == end_of_text
        cut = end_of_text if fits else _best_cut(text, start, window_end)
        parts.append(text[start:cut].rstrip())
        start = _skip_space(text, cut)
    return parts


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _window_end(text: str, start: int, stop: int, limit: int) -> int:
    """The largest index such that ``text[start:index]`` fits in ``limit`` units."""
    units = 0
    index = start
    while index < stop:
        width = 2 if ord(text[index]) > 0xFFFF else 1
        if units + width > limit:
            break
        units += width
        index += 1
    return index


def _best_cut(text: str, start: int, window_end: int) -> int:
    """Where to end the part that starts at ``start`` and may run up to ``window_end``.

    ``text[window_end]`` exists (the remainder does not fit), so boundaries that need to
    look at the next character can see it: the searches run on ``text[start:window_end+1]``
    and only accept cuts at or before ``window_end``.
    """
    room = window_end - start
    view = text[start : window_end + 1]

    paragraph = _last_cut(_PARAGRAPH_BREAK, view, room, use_end=False)
    if paragraph is not None and paragraph >= room // 2:
        return start + paragraph
    sentence = _last_cut(_SENTENCE_END, view, room, use_end=True)
    line = _last_cut(_LINE_BREAK, view, room, use_end=False)
    candidates = [cut for cut in (sentence, line) if cut]
    if candidates:
        return start + max(candidates)
    word = _last_cut(_WHITESPACE, view, room, use_end=False)
    if word:
        return start + word
    return _hard_cut(text, start, window_end)


def _last_cut(pattern: re.Pattern[str], view: str, room: int, *, use_end: bool) -> int | None:
    last: int | None = None
    for match in pattern.finditer(view):
        cut = match.end() if use_end else match.start()
        if cut > room:
            break
        if cut > 0:
            last = cut
    return last


def _hard_cut(text: str, start: int, window_end: int) -> int:
    """Cut a run with no whitespace at ``window_end``, moving back off a combining mark or
    joiner so an accent or an emoji sequence is not torn apart (unless the whole window is
    one such cluster, when any cut is as good as another)."""
    cut = window_end
    while cut > start + 1 and _inside_cluster(text, cut):
        cut -= 1
    return window_end if _inside_cluster(text, cut) else cut


def _inside_cluster(text: str, index: int) -> bool:
    return bool(
        unicodedata.combining(text[index]) or text[index] in _JOINERS or text[index - 1] in _JOINERS
    )


# ---------------------------------------------------------------------------------------
# Template or text


@attrs.frozen
class ReplyPlan:
    """What a reply becomes on WhatsApp: free-text ``parts`` or one ``template``.

    The two fields map onto ``ReplyRequested.parts`` and ``ReplyRequested.template``;
    exactly one of them is used.
    """

    parts: tuple[str, ...] = ()
    template: Template | None = None


def plan_reply(
    text: str, *, window_is_open: bool, template: Template | None, limit: int = BODY_LIMIT
) -> ReplyPlan:
    """The template alone, or ``text`` split into parts.

    Outside the customer-service window Twilio accepts free text and fails it afterwards
    with 63016, so the configured template goes instead, alone: text after it would fail
    the same way, because our own messages never open the window (the person's reply does).
    Inside the window, or with no template configured, ``text`` goes out as free-form parts.

    Raises:
        EmptyMessage: free text is needed and ``text`` is empty or whitespace only.
    """
    if not window_is_open and template is not None:
        return ReplyPlan(template=template)
    parts = tuple(split_message(text, limit))
    if not parts:
        raise EmptyMessage("refusing to plan an empty or whitespace-only reply")
    return ReplyPlan(parts=parts)


def content_variables_json(variables: Mapping[str, str]) -> str:
    """Encode template variables as Twilio's ``ContentVariables`` JSON string.

    Raises:
        EmptyMessage: a variable is empty or whitespace only (it would render as a blank in
            the person's message).
        ValueError: too many variables, or a key or value that is not a string.
    """
    if len(variables) > MAX_CONTENT_VARIABLES:
        raise ValueError(
            f"{len(variables)} template variables, Twilio accepts at most {MAX_CONTENT_VARIABLES}"
        )
    for key, value in variables.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"template variable {key!r} must map a string to a string")
        if not value.strip():
            raise EmptyMessage(f"refusing to send template variable {key!r} empty")
    return json.dumps(dict(variables), ensure_ascii=False, separators=(",", ":"))


def check_content_sid(content_sid: str) -> None:
    """Refuse a Content SID that is not ``HX`` + 32 hex digits (Twilio would 400 on it)."""
    if not _CONTENT_SID.match(content_sid):
        raise ValueError(f"{content_sid!r} is not a Content SID (HX followed by 32 hex digits)")


# ---------------------------------------------------------------------------------------
# Retry timing


def is_retryable_status(status: int) -> bool:
    """429 and 5xx are worth retrying; any other 4xx will fail the same way again."""
    return status == 429 or 500 <= status <= 599


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Returns None when the header is absent or unreadable (the caller falls back to its
    own backoff); a date in the past means "now" (0.0).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(
    retry: int,
    *,
    initial: float,
    maximum: float,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """How long to sleep before retry number ``retry`` (1 for the first retry).

    Full jitter (a uniform draw up to the exponential ceiling) spreads many actors that hit
    the same 429 so they do not come back in lock-step. A ``Retry-After`` from Twilio is a
    floor: the delay is that value plus a little jitter, never less.
    """
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, got {retry}")
    ceiling = min(maximum, initial * 2 ** (retry - 1))
    if retry_after is not None:
        return retry_after + rng.uniform(0.0, min(initial, ceiling))
    return rng.uniform(0.0, ceiling)


# ---------------------------------------------------------------------------------------
# Twilio JSON


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
