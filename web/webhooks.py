"""The Twilio webhooks: inbound messages and status callbacks. Each handler validates,
appends, notifies, answers.

A handler's answer comes only after its event is durable (ARCHITECTURE.md, invariant 1):
if the log cannot take it within ``APPEND_BUDGET`` (12 s, before Twilio's 15 s), the answer
is a 503 and nothing was acknowledged. Twilio delivers a 503 again only when the webhook
URL asks for it with a connection override (``#rp=5xx,rt,ct``; README); by default it
retries only a failed connection (docs/reference/twilio-whatsapp.md, section 1.4). A
repeated delivery is recognised by its derived event id and answered like the first, with
nothing appended.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from quart import Blueprint, Response, request

from clients.twilio.forms import (
    EMPTY_TWIML,
    Form,
    FormError,
    delivery_status,
    message_received,
    parse_form,
    signature_is_valid,
)
from clients.twilio.recipients import recipient_error
from events.codec import to_new_event
from events.conversation import (
    RecipientUnreachable,
    delivery_stream,
    inbound_event_id,
    phone_stream,
    status_event_id,
    unreachable_event_id,
)
from web.context import append_in_time, current_system

webhooks = Blueprint("twilio_webhooks", __name__)


def _reject(status: int, reason: str) -> Response:
    return Response(json.dumps({"error": reason}), status=status, mimetype="application/json")


async def _signed_form(url: str) -> Form | Response:
    """The POSTed form if its X-Twilio-Signature is right for ``url``; else a 403/400."""
    system = current_system()
    signature = request.headers.get("X-Twilio-Signature")
    if not signature:
        return _reject(403, "missing X-Twilio-Signature")
    if request.mimetype != "application/x-www-form-urlencoded":
        return _reject(400, "expected an application/x-www-form-urlencoded body")
    try:
        form = parse_form(await request.get_data(cache=False, as_text=False, parse_form_data=False))
    except FormError as exc:
        return _reject(400, str(exc))
    if request.query_string:
        url = f"{url}?{request.query_string.decode('latin-1')}"
    if not signature_is_valid(system.settings.twilio_auth_token, url, form, signature):
        return _reject(
            403,
            "X-Twilio-Signature does not match: check that PUBLIC_BASE_URL is the URL "
            "Twilio calls and TWILIO_AUTH_TOKEN is the account's primary token",
        )
    return form


@webhooks.post("/webhooks/twilio/whatsapp")
async def twilio_whatsapp() -> Response:
    """An inbound WhatsApp message: record it, wake the phone's actor, answer empty TwiML."""
    system = current_system()
    form = await _signed_form(system.settings.whatsapp_webhook_url)
    if isinstance(form, Response):
        return form
    try:
        message = message_received(form, datetime.now(UTC))
    except FormError as exc:
        return _reject(400, str(exc))
    result = await append_in_time(
        system.store,
        phone_stream(message.phone),
        [to_new_event(message, event_id=inbound_event_id(message.message_sid))],
    )
    if not result.duplicate:
        system.notify_phone(message.phone, result.version, message)
    return Response(EMPTY_TWIML, status=200, mimetype="application/xml")


@webhooks.post("/webhooks/twilio/status")
async def twilio_status() -> Response:
    """A delivery status for a message we sent: recorded in the phone's delivery stream
    (not the conversation's, whose version the phone actor's decisions expect)."""
    system = current_system()
    form = await _signed_form(system.settings.status_callback_url)
    if isinstance(form, Response):
        return form
    try:
        phone, status = delivery_status(form, datetime.now(UTC))
    except FormError as exc:
        return _reject(400, str(exc))
    await append_in_time(
        system.store,
        delivery_stream(phone),
        [to_new_event(status, event_id=status_event_id(status.message_sid, status.status))],
    )
    refusal = recipient_error(status.error_code)
    if refusal is not None and status.status in ("failed", "undelivered"):
        # The person cannot or will not receive: the one status the conversation itself
        # must know of (rare, so it does not move the actor's version in the common case).
        unreachable = RecipientUnreachable(
            error_code=refusal.code,
            meaning=refusal.meaning,
            at=status.at,
            message_sid=status.message_sid,
            detail=status.error_message,
        )
        result = await append_in_time(
            system.store,
            phone_stream(phone),
            [
                to_new_event(
                    unreachable,
                    event_id=unreachable_event_id(refusal.code, status.message_sid),
                )
            ],
        )
        if not result.duplicate:
            system.notify_phone(phone, result.version, unreachable)
    return Response("", status=204)
