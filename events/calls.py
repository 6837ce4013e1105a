"""Facts about phone calls placed by the ElevenLabs agent.

A finished call is recorded in the stream of the phone it reached (``phone-+E164``), with an
event id derived from the ElevenLabs ``conversation_id``: the post-call webhook and the batch
monitor may both report the same call, and the second append is a no-op.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import attrs

from events.codec import derived_id, event_type

DynamicValue = str | int | float | bool
CallSource = Literal["webhook", "batch_monitor", "cli", "test"]


@attrs.frozen
class TranscriptLine:
    """One turn of the phone call, as ElevenLabs reports it."""

    role: str  # "agent" or "user"
    message: str


@event_type
@attrs.frozen
class CallCompleted:
    """The agent's phone call with this person ended and was analysed."""

    conversation_id: str
    agent_id: str
    phone: str
    summary: str
    transcript: tuple[TranscriptLine, ...] = ()
    dynamic_variables: dict[str, DynamicValue] = attrs.field(factory=dict)
    customer_name: str | None = None
    batch_id: str | None = None
    recipient_id: str | None = None
    ended_at: datetime | None = None
    source: CallSource = "webhook"


@event_type
@attrs.frozen
class CallFailed:
    """The call never connected (busy, no answer, voicemail, failed).

    ``follow_up`` records, at the edge that saw the failure, whether the deployment wants a
    WhatsApp message after such a call (``AFTERCALL_FOLLOW_UP_FAILED_CALLS``); by default
    nobody is messaged about a call they did not take.
    """

    conversation_id: str
    agent_id: str
    phone: str
    reason: str
    batch_id: str | None = None
    recipient_id: str | None = None
    source: CallSource = "webhook"
    follow_up: bool = False


def call_event_id(conversation_id: str) -> UUID:
    """The one id a call's outcome gets, whichever path reports it first."""
    return derived_id("elevenlabs-call", conversation_id)
