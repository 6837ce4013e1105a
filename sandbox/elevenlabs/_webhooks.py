"""Post-call webhooks: the envelope, the ``ElevenLabs-Signature`` header, and delivery.

Signing is a pure function so a test can check it against the official SDK's verifier
(``ElevenLabs().webhooks.construct_event``) without a network. Delivery is one POST per
attempt with ``httpx.AsyncClient``; success means HTTP 200 exactly, as the service counts it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs
import httpx
import trio

logger = logging.getLogger(__name__)

WebhookType = Literal["post_call_transcription", "call_initiation_failure"]

#: The settings ``events`` names that enable each webhook type
#: (docs/reference/elevenlabs-agents.md §5).
EVENT_SETTING: dict[str, str] = {
    "post_call_transcription": "transcript",
    "call_initiation_failure": "call_initiation_failure",
}


def sign(raw_body: str, secret: str, timestamp: int) -> str:
    """The ``ElevenLabs-Signature`` header value: ``t=<unix>,v0=<hex>``.

    ``hex = HMAC-SHA256(secret, f"{t}.{raw_body}")``, exactly what the SDK verifier rebuilds.
    """
    digest = hmac.new(
        secret.encode("utf-8"), f"{timestamp}.{raw_body}".encode(), hashlib.sha256
    ).hexdigest()
    return f"t={timestamp},v0={digest}"


def envelope(event_type: WebhookType, event_timestamp: int, data: dict[str, Any]) -> str:
    """The raw JSON body: ``{"type", "event_timestamp", "data"}``, serialised once.

    The same string is signed and sent, so the receiver's HMAC over the raw body matches.
    """
    return json.dumps({"type": event_type, "event_timestamp": event_timestamp, "data": data})


@attrs.frozen
class WebhookJob:
    """One webhook to send; built when a conversation finishes, delivered after."""

    event_type: WebhookType
    conversation_id: str
    agent_id: str
    data: dict[str, Any]
    event_timestamp: int


@attrs.frozen
class WebhookDelivery:
    """One delivery attempt, as observed by the sender.

    ``status_code`` is ``None`` when the request failed before a response (connection
    refused, timeout); ``error`` then names the exception class only (no URLs or secrets).
    """

    event_type: WebhookType
    conversation_id: str
    attempt: int
    copy: int
    status_code: int | None
    error: str | None
    body: str
    signature: str


async def deliver(
    client: httpx.AsyncClient,
    job: WebhookJob,
    *,
    url: str,
    secret: str | None,
    retry_delays: Sequence[float],
    copies: int,
    wall_clock: Callable[[], float],
    record: Callable[[WebhookDelivery], None],
) -> None:
    """POST ``job`` to ``url`` ``copies`` times, each retried after ``retry_delays`` on non-200.

    The signature timestamp comes from ``wall_clock`` (real time by default), because the
    receiver checks it against its own clock (the SDK rejects signatures older than 30
    minutes). Without a secret the header is omitted, like an unauthenticated webhook.
    """
    body = envelope(job.event_type, job.event_timestamp, job.data)
    for copy in range(1, copies + 1):
        for attempt, delay in enumerate([0.0, *retry_delays], start=1):
            if delay:
                await trio.sleep(delay)
            signature = sign(body, secret, int(wall_clock())) if secret else ""
            headers = {"content-type": "application/json"}
            if signature:
                headers["ElevenLabs-Signature"] = signature
            status: int | None = None
            error: str | None = None
            try:
                response = await client.post(url, content=body.encode(), headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                error = type(exc).__name__
                logger.info("webhook %s attempt %d failed: %s", job.event_type, attempt, error)
            record(
                WebhookDelivery(
                    job.event_type,
                    job.conversation_id,
                    attempt,
                    copy,
                    status,
                    error,
                    body,
                    signature,
                )
            )
            if status == 200:
                break
