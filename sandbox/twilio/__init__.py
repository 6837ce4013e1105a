"""A local stand-in for Twilio's WhatsApp messaging: REST API, webhooks, status callbacks.

Serve one with ``async with serve_twilio() as twilio:``; point the app's Twilio client at
``twilio.base_url`` and ``twilio.webhook_url`` at the app; make users speak with
``await twilio.user_says("+15551234567", "hi")`` and read what they got with
``twilio.received("+15551234567")``. The wire format follows
docs/reference/twilio-whatsapp.md.
"""

from sandbox.twilio._clock import SandboxClock
from sandbox.twilio._errors import NotServing, NoWebhookUrl
from sandbox.twilio._faults import ArmedFault, Fault, FaultPlan, HeldRequest
from sandbox.twilio._protocol import (
    CreateRequest,
    ListQuery,
    TwimlError,
    TwimlReply,
    check_create,
    e164,
    inbound_params,
    message_json,
    page_json,
    parse_twiml,
    render_template,
    sign,
    status_params,
    whatsapp_address,
    window_open,
)
from sandbox.twilio._standin import WINDOW_CLOSED_MESSAGE, TwilioStandIn, serve_twilio
from sandbox.twilio._values import (
    API_VERSION,
    MAX_BODY_CHARS,
    SANDBOX_ACCOUNT_SID,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_WHATSAPP_FROM,
    WINDOW_SECONDS,
    ApiError,
    Delivery,
    DeliveryDelays,
    Media,
    MessageRecord,
    RecipientRefusal,
    StoredMedia,
    Template,
)

__all__ = [
    "API_VERSION",
    "MAX_BODY_CHARS",
    "SANDBOX_ACCOUNT_SID",
    "SANDBOX_AUTH_TOKEN",
    "SANDBOX_WHATSAPP_FROM",
    "WINDOW_CLOSED_MESSAGE",
    "WINDOW_SECONDS",
    "ApiError",
    "ArmedFault",
    "CreateRequest",
    "Delivery",
    "DeliveryDelays",
    "Fault",
    "FaultPlan",
    "HeldRequest",
    "ListQuery",
    "Media",
    "MessageRecord",
    "NoWebhookUrl",
    "NotServing",
    "RecipientRefusal",
    "SandboxClock",
    "StoredMedia",
    "Template",
    "TwilioStandIn",
    "TwimlError",
    "TwimlReply",
    "check_create",
    "e164",
    "inbound_params",
    "message_json",
    "page_json",
    "parse_twiml",
    "render_template",
    "serve_twilio",
    "sign",
    "status_params",
    "whatsapp_address",
    "window_open",
]
