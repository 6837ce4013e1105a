"""A local stand-in for the ElevenLabs Agents Platform, speaking its documented wire protocol.

Serve it with ``serve_elevenlabs()`` and point the app (or the official SDK) at its
``base_url``: the agent WebSocket, the REST calls aftercall uses (signed URLs, batch calling,
conversations, Twilio outbound calls) and signed post-call webhooks behave as the reference
in docs/reference/elevenlabs-agents.md describes. Faults, agents, the call clock and
what each session received are reachable as methods and attributes, or over ``/_sandbox``.
"""

from sandbox.elevenlabs._agents import DEFAULT_AGENT_ID, AgentConfig, ClientToolScript
from sandbox.elevenlabs._brain import Brain, SessionContext, Turn, context_brain, scripted_brain
from sandbox.elevenlabs._calls import CallScript, CallTiming, Outcome
from sandbox.elevenlabs._errors import RequestError
from sandbox.elevenlabs._faults import NO_FAULTS, Faults
from sandbox.elevenlabs._protocol import ERROR_CLOSE_CODES
from sandbox.elevenlabs._records import (
    Analysis,
    BatchRecord,
    ConversationRecord,
    PhoneCallInfo,
    RecipientRecord,
    TranscriptEntry,
)
from sandbox.elevenlabs._session import LiveSession
from sandbox.elevenlabs._standin import ElevenLabsStandIn, serve_elevenlabs
from sandbox.elevenlabs._webhooks import WebhookDelivery, sign

__all__ = [
    "DEFAULT_AGENT_ID",
    "ERROR_CLOSE_CODES",
    "NO_FAULTS",
    "AgentConfig",
    "Analysis",
    "BatchRecord",
    "Brain",
    "CallScript",
    "CallTiming",
    "ClientToolScript",
    "ConversationRecord",
    "ElevenLabsStandIn",
    "Faults",
    "LiveSession",
    "Outcome",
    "PhoneCallInfo",
    "RecipientRecord",
    "RequestError",
    "SessionContext",
    "TranscriptEntry",
    "Turn",
    "WebhookDelivery",
    "context_brain",
    "scripted_brain",
    "serve_elevenlabs",
    "sign",
]
