"""What a WhatsApp message may carry, as plain functions over values: bodies and templates.

Twilio refuses a body over 1600 characters (21617), and an empty body is never something a
person should receive (ARCHITECTURE.md, invariant 3): `check_body` refuses both and
`split_message` cuts a long answer into parts on sentence boundaries. A template goes as a
Content SID (`check_content_sid`) with its variables as one JSON string
(`content_variables_json`). The sender (``clients.twilio.sender``) does the I/O.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Final

#: Twilio's limit on ``Body``. Over it the create call fails with 21617.
BODY_LIMIT: Final = 1600
#: Twilio accepts at most this many ``ContentVariables``.
MAX_CONTENT_VARIABLES: Final = 100

_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")


class EmptyMessage(ValueError):
    """A body (or template variable) that is empty or whitespace only.

    Nothing empty is ever sent to Twilio (invariant 3): an empty agent answer must be
    replaced by the fallback message before it reaches the sender.
    """


class MessageTooLong(ValueError):
    """A single body over Twilio's 1600-character limit: split it with `split_message`."""


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


# Templates


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
