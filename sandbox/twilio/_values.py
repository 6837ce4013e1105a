"""The values the Twilio stand-in keeps and hands out: messages, templates, media, deliveries.

All frozen: a status change is a new record (``attrs.evolve``) swapped into the store, so a
test that holds a record from earlier sees what was true then, not a moving target.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import attrs

API_VERSION = "2010-04-01"
#: The WhatsApp sandbox number every Twilio account shares (reference §5).
SANDBOX_WHATSAPP_FROM = "whatsapp:+14155238886"
#: Fixed sandbox credentials, so a developer's configuration survives restarts. Not secrets:
#: they open nothing but the stand-in.
SANDBOX_ACCOUNT_SID = "AC5a4db0c55a4db0c55a4db0c55a4db0c5"
SANDBOX_AUTH_TOKEN = "5a4db0c5a4db0c5a4db0c5a4db0c5a4d"
#: Twilio limits a message body to 1,600 characters (21617).
MAX_BODY_CHARS = 1600
#: The customer-service window WhatsApp grants after each inbound message.
WINDOW_SECONDS = 24 * 60 * 60

Direction = Literal["inbound", "outbound-api", "outbound-reply"]


@attrs.frozen
class MessageRecord:
    """One message as Twilio's Message resource describes it (inbound or outbound).

    ``to`` and ``from_`` are channel addresses (``whatsapp:+E164``), as Twilio returns them.
    """

    sid: str
    account_sid: str
    direction: Direction
    from_: str
    to: str
    body: str
    status: str
    date_created: datetime
    date_updated: datetime
    date_sent: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None
    media_urls: tuple[str, ...] = ()
    content_sid: str | None = None
    messaging_service_sid: str | None = None
    status_callback: str | None = None


@attrs.frozen
class Template:
    """A content template (``HX…``) whose body holds ``{{1}}``-style placeholders."""

    sid: str
    body: str


@attrs.frozen
class Media:
    """An attachment a simulated user sends; the stand-in serves it behind Basic auth."""

    content_type: str
    content: bytes = b"sandbox media"


@attrs.frozen
class StoredMedia:
    """Media the stand-in serves at ``/Accounts/AC…/Messages/MM…/Media/ME…``."""

    sid: str
    message_sid: str
    content_type: str
    content: bytes


@attrs.frozen
class DeliveryDelays:
    """Seconds (on trio's clock) between the steps of an outbound message's life."""

    sent: float = 0.05
    delivered: float = 0.1
    read: float = 1.0


@attrs.frozen
class Delivery:
    """One request the stand-in made to the app (inbound webhook or status callback).

    ``debugger_code`` is the error Twilio's debugger would have logged for the answer
    (11200 connection failure, 11205 timeout, 11217 HTTP error status, 12100 unparsable
    TwiML, 12300 missing Content-Type), or None when the app answered well.
    """

    kind: Literal["inbound", "status"]
    url: str
    params: tuple[tuple[str, str], ...]
    message_sid: str
    status_code: int | None
    debugger_code: int | None = None


#: Twilio's titles for the errors that mean a recipient cannot, or will not, receive
#: (docs/reference/twilio-whatsapp.md §3.4).
RECIPIENT_ERROR_MESSAGES: dict[int, str] = {
    21610: "Attempt to send to unsubscribed recipient",
    63003: "Channel could not find To address",
    63014: "Channel message blocked by user action",
    63024: "Invalid message recipient",
}


@attrs.frozen
class RecipientRefusal:
    """How messages to one recipient fail: ``sync`` answers the create with a 400 (what
    Twilio does for 21610); otherwise the create is accepted and the message fails after,
    reported by its status callback (the WhatsApp 63xxx codes)."""

    code: int
    message: str
    sync: bool


@attrs.frozen
class ApiError:
    """A REST error in Twilio's legacy JSON shape (reference §3.3)."""

    status: int
    code: int
    message: str
    detail: str | None = None

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }
        if self.detail is not None:
            body["detail"] = self.detail
        return body
