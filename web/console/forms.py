"""The console's form posts, read strictly: a bad one is a 400 naming what is wrong.

Browsers post these forms as ``application/x-www-form-urlencoded`` UTF-8 (the console
has no file fields); anything else is not the console's. The body is parsed here rather
than by the framework's form parser for the same reasons as the Twilio webhooks'
(``clients.twilio.forms``): every field a handler reads has a known size, a repeated or
unknown field is refused instead of silently picked, and nothing a database cannot store
(a NUL) gets further.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qsl

FORM_TYPE: Final = "application/x-www-form-urlencoded"
#: No console form has more fields than this.
MAX_FIELDS: Final = 12


class FormError(ValueError):
    """A post the console cannot take; the message is shown to the operator."""


def parse_form(content_type: str | None, body: bytes, fields: Mapping[str, int]) -> dict[str, str]:
    """The form's fields, each at most ``fields[name]`` characters; missing ones are "".

    Raises:
        FormError: not a URL-encoded UTF-8 form, an unknown or repeated field, a value
            too long or holding a NUL.
    """
    if (content_type or "").split(";", 1)[0].strip().lower() != FORM_TYPE:
        raise FormError(f"expected a form posted as {FORM_TYPE}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("the form is not UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise FormError("the form is malformed or has too many fields") from None
    found: dict[str, str] = {}
    for name, value in pairs:
        if name not in fields:
            raise FormError(f"unexpected field {name[:40]!r}")
        if name in found:
            raise FormError(f"field {name!r} is given twice")
        if len(value) > fields[name]:
            raise FormError(f"{name} is longer than {fields[name]} characters")
        if "\x00" in value:
            raise FormError(f"{name} contains a NUL character")
        found[name] = value
    return {name: found.get(name, "") for name in fields}


def csrf_in(body: bytes) -> str:
    """The ``csrf`` field of a post that `parse_form` refused, if it has exactly one:
    whether the refusal is a 400 (the operator's own bad input) or a 403 (not theirs)."""
    try:
        values = [v for k, v in parse_qsl(body.decode("utf-8", "replace")) if k == "csrf"]
    except ValueError:
        return ""
    return values[0] if len(values) == 1 else ""
