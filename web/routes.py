"""The routes: Twilio webhooks, health. Each handler validates, appends, notifies, answers.

A handler's answer comes only after its event is durable (invariant 1): if the log cannot
take it, the answer is a 503 and Twilio delivers again later. A repeated delivery is
recognised by its derived event id and answered like the first, with nothing appended.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from events.codec import to_new_event
from events.conversation import delivery_stream, inbound_event_id, phone_stream, status_event_id
from web import api, post_call
from web.twilio_forms import (
    EMPTY_TWIML,
    Form,
    FormError,
    delivery_status,
    message_received,
    parse_form,
    signature_is_valid,
)

#: Twilio's webhook forms are a few KiB (a 1,600-character body, media URLs, a few dozen
#: fields); anything far larger is not Twilio.
TWILIO_FORM_LIMIT = 64 * 1024


def register(app: QuartTrio) -> None:
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/readyz", view_func=readyz, methods=["GET"])
    app.add_url_rule("/webhooks/twilio/whatsapp", view_func=twilio_whatsapp, methods=["POST"])
    app.add_url_rule("/webhooks/twilio/status", view_func=twilio_status, methods=["POST"])
    post_call.register(app)
    api.register(app)


def _system() -> Any:
    from web.app import current_system

    return current_system()


def _reject(status: int, reason: str) -> Response:
    return Response(json.dumps({"error": reason}), status=status, mimetype="application/json")


async def healthz() -> dict[str, str]:
    """Alive: the process answers. Says nothing about its dependencies (that is /readyz)."""
    return {"status": "ok"}


async def readyz() -> tuple[dict[str, Any], int]:
    """Ready: the event log answers and the actor system runs."""
    system = _system()
    problems = []
    try:
        with trio.fail_after(2):
            head = await system.store.head()
    except (Exception, trio.TooSlowError) as exc:
        problems.append(f"event log: {type(exc).__name__}")
        head = None
    stats = system.phones.statistics()
    if stats.closing:
        problems.append("actor system is shutting down")
    body = {
        "status": "ready" if not problems else "not ready",
        "problems": problems,
        "event_log_head": head,
        "active_actors": stats.active_actors,
    }
    return body, 200 if not problems else 503


async def _signed_form(url: str) -> Form | Response:
    """The POSTed form if its X-Twilio-Signature is right for ``url``; else a 403/400."""
    system = _system()
    signature = request.headers.get("X-Twilio-Signature")
    if not signature:
        return _reject(403, "missing X-Twilio-Signature")
    if request.mimetype != "application/x-www-form-urlencoded":
        return _reject(400, "expected an application/x-www-form-urlencoded body")
    if request.content_length is not None and request.content_length > TWILIO_FORM_LIMIT:
        return _reject(413, f"a Twilio webhook form is at most {TWILIO_FORM_LIMIT} bytes")
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


async def twilio_whatsapp() -> Response:
    """An inbound WhatsApp message: record it, wake the phone's actor, answer empty TwiML."""
    system = _system()
    form = await _signed_form(system.settings.whatsapp_webhook_url)
    if isinstance(form, Response):
        return form
    try:
        message = message_received(form, datetime.now(UTC))
    except FormError as exc:
        return _reject(400, str(exc))
    result = await system.store.append(
        phone_stream(message.phone),
        [to_new_event(message, event_id=inbound_event_id(message.message_sid))],
    )
    if not result.duplicate:
        system.notify_phone(message.phone, result.version, message)
    return Response(EMPTY_TWIML, status=200, mimetype="application/xml")


async def twilio_status() -> Response:
    """A delivery status for a message we sent: recorded in the phone's delivery stream
    (not the conversation's, whose version the phone actor's decisions expect)."""
    system = _system()
    form = await _signed_form(system.settings.status_callback_url)
    if isinstance(form, Response):
        return form
    try:
        phone, status = delivery_status(form, datetime.now(UTC))
    except FormError as exc:
        return _reject(400, str(exc))
    await system.store.append(
        delivery_stream(phone),
        [to_new_event(status, event_id=status_event_id(status.message_sid, status.status))],
    )
    return Response("", status=204)
