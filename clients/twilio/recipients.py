"""Twilio error codes that mean the person cannot, or will not, receive what we send.

A send that fails with one of these fails the same way for every message after it, so the
phone actor stops sending to that person (``events.conversation.RecipientUnreachable``)
instead of trying each reply and fallback again. Every other code (63016 outside the
24-hour window, 63018 rate limits, 63049 Meta holding back a marketing template) says
something about one message, not about the person, and stops nothing.

Sources (docs/reference/twilio-whatsapp.md §3.4 keeps them with the other codes):

- 21610 "Attempt to send to unsubscribed recipient": the person replied STOP to the
  sender, Channels sender or Messaging Service; nothing is delivered until they send START
  (https://www.twilio.com/docs/api/errors/21610). A synchronous 400 on create.
- 63014 "Channel message blocked by user action": the person blocked the sender in
  WhatsApp, or withdrew consent (https://www.twilio.com/docs/api/errors/63014).
- 63024 "Invalid message recipient": Meta says the number is not a valid WhatsApp user, has
  not accepted WhatsApp's terms, or runs a client too old to receive
  (https://www.twilio.com/docs/api/errors/63024; WhatsApp's 1002 and 1026 map to it,
  https://www.twilio.com/docs/whatsapp/api/error-code-mapping).
- 63003 "Channel could not find To address": the address is inactive or invalid
  (https://www.twilio.com/docs/errors/63003; WhatsApp's 1006, 1013 and 1021 map to it).

The 63xxx codes arrive in status callbacks (the create answered 201, the message failed
later) or, for some, as a 400 on create; both paths are handled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

import attrs

#: ``will_not``: the person chose not to receive (opted out, blocked us);
#: ``cannot``: the address cannot receive WhatsApp messages at all.
Refusal = Literal["will_not", "cannot"]


@attrs.frozen
class RecipientError:
    """One code, what it means for the person, and where Twilio documents it."""

    code: int
    meaning: str
    refusal: Refusal
    source: str


RECIPIENT_ERRORS: Final[Mapping[int, RecipientError]] = {
    error.code: error
    for error in (
        RecipientError(
            21610,
            "unsubscribed recipient: the person opted out of this sender at Twilio",
            "will_not",
            "https://www.twilio.com/docs/api/errors/21610",
        ),
        RecipientError(
            63014,
            "blocked by the person: they blocked this sender in WhatsApp or withdrew consent",
            "will_not",
            "https://www.twilio.com/docs/api/errors/63014",
        ),
        RecipientError(
            63024,
            "invalid message recipient: not a WhatsApp user, WhatsApp's terms not accepted, "
            "or a WhatsApp too old to receive",
            "cannot",
            "https://www.twilio.com/docs/api/errors/63024",
        ),
        RecipientError(
            63003,
            "the WhatsApp address is inactive or invalid",
            "cannot",
            "https://www.twilio.com/docs/errors/63003",
        ),
    )
}


def recipient_error(code: object) -> RecipientError | None:
    """The recipient error a Twilio error code is, or ``None`` for any other code (or a
    code that is not a whole number)."""
    if type(code) is not int:
        return None
    return RECIPIENT_ERRORS.get(code)
