"""Facts and decisions of a WhatsApp follow-up conversation, in the phone's streams.

The stream ``phone-+E164`` is the conversation: the call it follows (``events.calls``),
every inbound message, every exchange with the agent and every reply with its outbox steps
(requested -> sent or failed). The phone actor folds it to know where it is and appends
its decisions to it with an expected version; projections fold it for history and metrics.

Delivery statuses go to ``delivery-+E164`` beside it. Twilio reports three or more for
every message we send (sent, delivered, read), no decision depends on them, and in the
conversation's stream each one moved the version under the actor: its next decision was
a conflict (read the stream again, append again) and, on PostgreSQL, made its whole
group-commit batch take the planned path. Measured with status callbacks on (benchmarks.
conversation, 50 conversations, three alternating rounds), moving them out took the median
from 98 to 144 messages per second and aftercall's added latency at p50 from ~440 to
~100 ms. Projections read both streams (and logs written before the move, with statuses in
the phone stream).

Outside facts get ids derived from their outside identity (Twilio MessageSid, status), so a
repeated webhook is a no-op. Replies follow the outbox rule: ``ReplyRequested`` (the intent,
with all its parts) is recorded before Twilio is called; ``ReplySent``/``ReplyFailed`` after.
An intent without an outcome after a crash is reconciled by looking the message up in
Twilio before sending again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import attrs

from events.codec import derived_id, event_type

ReplyKind = Literal[
    "first_message",
    "agent",
    "fallback",
    "media_notice",
    # what a person at the business writes (``OperatorMessageRequested``)
    "operator",
    # aftercall's own notices about who may speak (``events.conversation`` control facts)
    "optout_confirmation",
    "optin_confirmation",
    "handoff_notice",
]
FallbackReason = Literal["timeout", "empty", "session_closed", "unavailable", "protocol"]
#: Who asked for a person: the agent (its hand-off client tool) or the person themself (a
#: hand-off keyword, ``AFTERCALL_HANDOFF_KEYWORDS``).
HumanRequester = Literal["agent", "customer"]
#: Why the bot's words were not sent: a person at the business has the conversation (or
#: is being waited for), the person opted out, or Twilio says they cannot receive.
SilenceReason = Literal["human", "opted_out", "unreachable"]


@attrs.frozen
class MediaItem:
    content_type: str
    url: str


@event_type
@attrs.frozen
class MessageReceived:
    """A WhatsApp message from the person, as Twilio delivered it to our webhook.

    ``phone`` is the person's identity (``events.phones.identity_phone``), the key of the
    conversation; ``address`` is the number the message came from when it is another form
    of that identity (a Mexican WhatsApp account writes as ``+521...`` to a conversation
    that began with a call to ``+52...``): replies go back to it.
    """

    message_sid: str
    phone: str
    body: str
    received_at: datetime
    profile_name: str | None = None
    media: tuple[MediaItem, ...] = ()
    address: str | None = None


@event_type
@attrs.frozen
class AgentSessionOpened:
    """A text session with the agent was opened (and primed with the conversation so far)."""

    agent_conversation_id: str
    agent_id: str
    reopened: bool
    primed_turns: int
    opened_at: datetime


@event_type
@attrs.frozen
class AgentSessionClosed:
    """The agent session ended; ``likely_cause`` says why in words an operator can act on."""

    agent_conversation_id: str
    code: int | None
    reason: str
    likely_cause: str | None
    closed_at: datetime


@event_type
@attrs.frozen
class AgentAsked:
    """Inbound messages were sent to the agent as one ``user_message`` turn."""

    turn_id: str
    message_sids: tuple[str, ...]
    text: str
    asked_at: datetime
    agent_conversation_id: str | None = None


@event_type
@attrs.frozen
class AgentAnswered:
    """The agent's answer for a turn; ``agent_seconds`` is its own latency."""

    turn_id: str
    text: str
    agent_seconds: float
    answered_at: datetime
    streamed_parts: int = 0
    corrected: bool = False


@event_type
@attrs.frozen
class AgentTurnFailed:
    """The agent did not give a usable answer; a fallback reply follows."""

    turn_id: str
    reason: FallbackReason
    detail: str
    failed_at: datetime


@attrs.frozen
class Template:
    """An approved WhatsApp template: Twilio ContentSid and its variables."""

    content_sid: str
    variables: dict[str, str] = attrs.field(factory=dict)


@event_type
@attrs.frozen
class ReplyRequested:
    """Outbox intent: these parts are to be sent to the phone, in order.

    ``in_reply_to`` lists the inbound MessageSids this reply answers (empty for the first
    message after a call). Exactly one of ``parts`` (free text) or ``template`` is used.
    """

    reply_id: str
    kind: ReplyKind
    parts: tuple[str, ...]
    requested_at: datetime
    in_reply_to: tuple[str, ...] = ()
    turn_id: str | None = None
    template: Template | None = None
    call_conversation_id: str | None = None
    #: Where the reply goes when not to the phone's identity itself: the address the person
    #: last wrote from, kept in the intent so a retry or a reconciliation after a crash
    #: addresses the same number.
    to: str | None = None
    #: For ``kind="operator"``: who wrote it, and the ``OperatorMessageRequested`` it sends.
    operator: str | None = None
    operator_request_id: str | None = None


@event_type
@attrs.frozen
class ReplySent:
    """Twilio accepted one part of a reply (``part`` counts from 0)."""

    reply_id: str
    part: int
    message_sid: str
    status: str
    sent_at: datetime
    send_started_at: datetime | None = None
    reconciled: bool = False


@event_type
@attrs.frozen
class ReplyFailed:
    """Twilio refused one part of a reply, or stayed unavailable past the retry budget."""

    reply_id: str
    part: int
    error_code: int | None
    http_status: int | None
    detail: str
    failed_at: datetime


@event_type
@attrs.frozen
class ReplyDelayed:
    """Twilio was unavailable (429/5xx/network) past the retry budget; the part is retried
    later from the outbox. Recorded so an operator sees the delay, not to settle the part."""

    reply_id: str
    part: int
    detail: str
    retry_in_seconds: float
    at: datetime


@event_type
@attrs.frozen
class DeliveryStatusChanged:
    """A Twilio status callback for a message we sent (sent, delivered, read, failed...),
    in the phone's ``delivery_stream``."""

    message_sid: str
    status: str
    at: datetime
    error_code: int | None = None
    error_message: str | None = None


# -- who may speak: people in control ---------------------------------------------------------
#
# Two kinds of events decide who may speak to the person. Decisions of the phone actor
# (``OptedOut``, ``OptedIn``, ``HumanRequested``, ``AgentReplySuppressed``,
# ``ReplyWithdrawn``, ``FirstMessageSkipped``), folded from the person's own messages and the
# agent's tool calls; and facts from outside (``HumanTookOver``, ``HandedBack``,
# ``OperatorMessageRequested`` from operators through the API or the console;
# ``RecipientUnreachable`` from Twilio), appended beside the actor's decisions. Both live in
# the phone's stream, so a restart folds exactly the same answer to "who may speak now".


@event_type
@attrs.frozen
class OptedOut:
    """The person sent an opt-out keyword (``STOP``, ``BAJA``...): nothing more is sent to
    them but one confirmation, until they opt in again. ``message_sid`` is the keyword's
    message; ``dropped`` lists the unanswered messages before it, left unanswered."""

    message_sid: str
    keyword: str
    at: datetime
    dropped: tuple[str, ...] = ()


@event_type
@attrs.frozen
class OptedIn:
    """The person sent an opt-in keyword (``START``, ``ALTA``...) while opted out; the
    messages they sent while opted out (``dropped``) stay unanswered."""

    message_sid: str
    keyword: str
    at: datetime
    dropped: tuple[str, ...] = ()


@event_type
@attrs.frozen
class RecipientUnreachable:
    """Twilio says this person cannot or will not receive (``error_code``: 21610 opted out
    at Twilio, 63014 blocked, 63024 not a valid WhatsApp user, 63003 no such address; see
    ``clients.twilio.recipients``). Nothing is sent until the person writes again.

    Recorded from the answer to a send (``reply_id``) or from a status callback
    (``message_sid``), with an id derived from those, so a repeat records nothing."""

    error_code: int
    meaning: str
    at: datetime
    message_sid: str | None = None
    reply_id: str | None = None
    detail: str | None = None


@event_type
@attrs.frozen
class HumanRequested:
    """The conversation waits for a person at the business: the agent called its hand-off
    client tool (``tool_call_id``) or the person wrote a hand-off keyword (``message_sid``).
    Until someone takes it over or hands it back, the bot says nothing."""

    by: HumanRequester
    reason: str
    at: datetime
    turn_id: str | None = None
    tool_call_id: str | None = None
    message_sid: str | None = None


@event_type
@attrs.frozen
class HumanTookOver:
    """A person at the business (``operator``) took the conversation over: the bot stays
    silent, inbound messages are only recorded, until ``HandedBack``."""

    operator: str
    at: datetime
    reason: str | None = None


@event_type
@attrs.frozen
class HandedBack:
    """The conversation is the bot's again. ``operator`` handed it back; ``None``: nobody
    at the business answered for ``AFTERCALL_HANDOFF_AUTO_RETURN`` seconds."""

    at: datetime
    operator: str | None = None
    reason: str | None = None


@event_type
@attrs.frozen
class OperatorMessageRequested:
    """An operator asked for ``text`` to be sent to the person. The phone actor turns it
    into a ``ReplyRequested(kind="operator")`` and sends it like any reply (intent, send,
    outcome; looked up before a resend after a crash).

    Outside WhatsApp's 24-hour window only an approved ``template`` can be delivered: the
    request then carries it, and ``text`` says what it is for people reading the log.
    """

    request_id: str
    operator: str
    text: str
    at: datetime
    template: Template | None = None


@event_type
@attrs.frozen
class AgentReplySuppressed:
    """The agent's answer to a turn (``text``, possibly empty when the turn never got one)
    was not sent: by the time it came, a person had the conversation, or the person had
    opted out. The turn is over; its messages are the person's to answer now."""

    turn_id: str
    text: str
    reason: SilenceReason
    at: datetime


@event_type
@attrs.frozen
class ReplyWithdrawn:
    """The unsent parts of a reply in the outbox (``parts``) will not be sent: a person took
    the conversation over, the person opted out, or Twilio says they cannot receive."""

    reply_id: str
    parts: tuple[int, ...]
    reason: SilenceReason
    at: datetime


@event_type
@attrs.frozen
class FirstMessageSkipped:
    """No first message after this call: the person opted out, cannot receive, or a person
    at the business has the conversation (``reason`` says which, as "skipped: opted out")."""

    call_conversation_id: str
    reason: str
    at: datetime


def inbound_event_id(message_sid: str) -> UUID:
    return derived_id("twilio-inbound", message_sid)


def status_event_id(message_sid: str, status: str) -> UUID:
    return derived_id("twilio-status", message_sid, status)


def unreachable_event_id(code: int, about: str) -> UUID:
    """One ``RecipientUnreachable`` per failed message: ``about`` is its MessageSid (a
    status callback, which Twilio may deliver twice) or ``<reply_id>/<part>`` (a send Twilio
    refused, which has no MessageSid)."""
    return derived_id("twilio-unreachable", str(code), about)


def operator_message_event_id(phone: str, idempotency_key: str) -> UUID:
    """An operator message sent with an ``Idempotency-Key``: a retried request is a no-op."""
    return derived_id("operator-message", phone, idempotency_key)


def phone_stream(phone: str) -> str:
    """The stream of the conversation with one phone (E.164)."""
    return f"phone-{phone}"


def delivery_stream(phone: str) -> str:
    """The stream of the delivery statuses of what was sent to one phone (E.164): outside
    facts nobody decides on, kept apart so they never move the conversation's version."""
    return f"delivery-{phone}"
