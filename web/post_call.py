"""``POST /webhooks/elevenlabs/post-call``: ElevenLabs tells us a call ended.

The handler verifies ``ElevenLabs-Signature``, turns the envelope into a call event with
``followup.call_rules`` (the batch monitor uses the same rules), appends it to the phone's
stream under ``call_event_id(conversation_id)``, wakes the phone actor, and answers 200. A
second delivery of the same call (ElevenLabs retries, or the monitor came first) is a no-op
answered like the first; one whose content differs from the call recorded under the same
conversation id (another phone, say) is still not recorded, but is logged as a warning and
its answer says how it differs (``differs``).

Answers, and why they differ:

* 401: the request cannot be shown to come from ElevenLabs (no header, wrong signature, a
  timestamp outside the 30-minute tolerance, which stops replays of an old delivery).
* 400: signed, but not something we can record (not JSON, no ``type``, an unknown type, a
  call without a conversation id).
* 503: ``ELEVENLABS_WEBHOOK_SECRET`` is not set (we cannot verify anything; ElevenLabs will
  deliver again once it is), or the log is unavailable (nothing acknowledged before it is
  durable).
* 200 ``ignored``: a real ElevenLabs event with nothing to follow up: a conversation that
  was not a phone call (including aftercall's own WhatsApp text sessions), or a
  ``post_call_audio``. Answering those with an error would count towards ElevenLabs
  disabling the webhook after repeated failures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import attrs
from quart import Blueprint, Response, request

from events.calls import CallCompleted, CallFailed, call_event_id
from events.codec import to_data, to_new_event
from events.conversation import phone_stream
from events.store import EventStore
from followup.call_rules import (
    InvalidCallData,
    NotAPhoneCall,
    NotFinished,
    call_from_conversation,
    call_from_failure,
)
from followup.control import fold_conversation
from followup.conversation import skip_reason
from web.context import append_in_time, current_system

logger = logging.getLogger(__name__)

PATH = "/webhooks/elevenlabs/post-call"
SIGNATURE_HEADER = "ElevenLabs-Signature"
#: How old a signature may be (the official SDKs' tolerance).
TOLERANCE_SECONDS = 30 * 60
#: ElevenLabs' post-call payloads nest about six levels (data.transcript[].tool_calls[]...);
#: far deeper is not theirs.
MAX_JSON_DEPTH = 32
#: Event types ElevenLabs sends that carry nothing to record here.
IGNORED_TYPES = frozenset({"post_call_audio"})


class WebhookRejected(Exception):
    """A request to refuse, with the HTTP status and the reason to send back."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@attrs.frozen
class Ignored:
    """A genuine event with nothing to record; answered 200."""

    reason: str


def verify_signature(
    raw_body: bytes,
    header: str | None,
    secret: str,
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> None:
    """Check ``t=<unix>,v0=<hex>`` against HMAC-SHA256(secret, ``t.raw_body``).

    Any ``v0`` in the header may match (ElevenLabs could sign with two secrets during a
    rotation). The comparison is constant-time. Timestamps further than ``tolerance`` from
    ``now`` either way are refused: the SDKs only refuse old ones, but a timestamp far in
    the future is as much a sign of a replay or a broken clock.

    Raises:
        WebhookRejected: 401, with what is wrong (never the secret or the expected value).
    """
    if not header or not header.strip():
        raise WebhookRejected(401, f"missing {SIGNATURE_HEADER} header")
    timestamp: str | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value.strip()
        elif key == "v0":
            signatures.append(f"v0={value.strip()}")
    if timestamp is None or not timestamp.isdigit():
        raise WebhookRejected(401, f"{SIGNATURE_HEADER} has no timestamp (t=<unix seconds>)")
    if not signatures:
        raise WebhookRejected(401, f"{SIGNATURE_HEADER} has no signature with scheme v0")
    age = now - int(timestamp)
    if abs(age) > tolerance:
        when = "old" if age > 0 else "in the future"
        raise WebhookRejected(
            401,
            f"{SIGNATURE_HEADER} timestamp is {abs(int(age))} s {when}, outside the "
            f"{int(tolerance)} s tolerance (a replayed delivery, or a clock that is wrong)",
        )
    digest = hmac.new(
        secret.encode("utf-8"), timestamp.encode("ascii") + b"." + raw_body, hashlib.sha256
    ).hexdigest()
    expected = f"v0={digest}"
    # Check every candidate (no early exit) so timing says nothing about which one matched.
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(signature.encode(), expected.encode())
    if not matched:
        raise WebhookRejected(
            401,
            f"{SIGNATURE_HEADER} does not match the body: check ELEVENLABS_WEBHOOK_SECRET "
            "is the webhook's secret",
        )


def parse_envelope(raw_body: bytes) -> tuple[str, Mapping[str, Any]]:
    """``{"type", "event_timestamp", "data"}`` -> (type, data).

    Strict JSON: no ``NaN`` or ``Infinity`` (Python's parser takes them, PostgreSQL's jsonb
    does not), no NUL in a string (jsonb cannot store one), nesting at most
    ``MAX_JSON_DEPTH`` deep (the parser recurses: ``[`` x 100,000 raises RecursionError).

    Raises:
        WebhookRejected: 400, naming what is wrong.
    """
    try:
        envelope = json.loads(raw_body, parse_constant=_refuse_constant)
    except RecursionError:
        raise WebhookRejected(
            400, f"the JSON is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookRejected(400, f"the body is not JSON ({exc})") from None
    problem = json_problem(envelope)
    if problem is not None:
        raise WebhookRejected(400, problem)
    if not isinstance(envelope, dict):
        raise WebhookRejected(400, "the body must be a JSON object")
    kind = envelope.get("type")
    if not isinstance(kind, str) or not kind:
        raise WebhookRejected(400, "the body has no 'type'")
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise WebhookRejected(400, f"{kind}: 'data' must be a JSON object")
    return kind, data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """What makes a parsed JSON value unfit to record, or ``None``: nesting deeper than
    ``max_depth``, or a NUL character in a string or key. Iterative, so a deep value
    cannot exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "the JSON contains a NUL character (\\u0000) in a string"
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > max_depth:
            return f"the JSON is nested too deeply (at most {max_depth} levels)"
        if isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return "the JSON contains a NUL character (\\u0000) in a key"
                stack.append((child, depth + 1))
        else:
            stack.extend((child, depth + 1) for child in item)
    return None


def event_for(kind: str, data: Mapping[str, Any]) -> CallCompleted | CallFailed | Ignored:
    """What a verified webhook records.

    Raises:
        WebhookRejected: 400 for an unknown type or a call without its ids.
    """
    try:
        if kind == "post_call_transcription":
            outcome = call_from_conversation(data, source="webhook")
        elif kind == "call_initiation_failure":
            outcome = call_from_failure(data, source="webhook")
        elif kind in IGNORED_TYPES:
            return Ignored(f"{kind} is not used by aftercall")
        else:
            raise WebhookRejected(
                400,
                f"unknown event type {kind!r}: expected post_call_transcription or "
                "call_initiation_failure",
            )
    except InvalidCallData as exc:
        raise WebhookRejected(400, f"{kind}: {exc}") from None
    if isinstance(outcome, NotAPhoneCall):
        return Ignored(outcome.reason)
    if isinstance(outcome, NotFinished):  # pragma: no cover - only with require_done
        return Ignored(f"conversation is {outcome.status}")
    return outcome


def _answer(status: int, body: Mapping[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


async def _difference(
    store: EventStore, position: int, event: CallCompleted | CallFailed
) -> str | None:
    """How a call that was a duplicate differs from the one recorded under its id (None:
    it does not, or the recorded one cannot be read): a second delivery of the same call
    says the same, whichever path (webhook, batch monitor) reported it first."""
    found = await store.read_all(after=position - 1, limit=1)
    if not found or found[0].position != position:
        return None
    recorded = found[0]
    offered = to_data(event)
    differences = []
    if recorded.stream != phone_stream(event.phone):
        differences.append(
            f"recorded for {recorded.stream.partition('-')[2]}, this one is for {event.phone}"
        )
    if recorded.type != type(event).__name__:
        differences.append(f"recorded as {recorded.type}, this one is {type(event).__name__}")
    for field in ("agent_id", "summary", "reason"):
        if field in offered and field in recorded.data and offered[field] != recorded.data[field]:
            differences.append(f"the {field} differs")
    return "; ".join(differences) or None


post_call_webhook = Blueprint("elevenlabs_webhooks", __name__)


@post_call_webhook.post(PATH)
async def post_call() -> Response:
    """Verify, record, wake the phone actor, answer; never waits for the follow-up."""
    system = current_system()
    secret = system.settings.elevenlabs_webhook_secret
    if not secret:
        return _answer(
            503,
            {"error": "ELEVENLABS_WEBHOOK_SECRET is not set: aftercall cannot verify "
             "post-call webhooks"},
        )  # fmt: skip
    raw = await request.get_data(False, False, False)
    try:
        verify_signature(raw, request.headers.get(SIGNATURE_HEADER), secret, time.time())
        kind, data = parse_envelope(raw)
        event = event_for(kind, data)
    except WebhookRejected as exc:
        logger.info("post-call webhook refused (%d): %s", exc.status, exc.reason)
        return _answer(exc.status, {"error": exc.reason})
    if isinstance(event, Ignored):
        logger.info("post-call webhook %s ignored: %s", kind, event.reason)
        return _answer(200, {"status": "ignored", "reason": event.reason})
    if isinstance(event, CallFailed) and system.settings.follow_up_failed_calls:
        event = attrs.evolve(event, follow_up=True)
    result = await append_in_time(
        system.store,
        phone_stream(event.phone),
        [to_new_event(event, event_id=call_event_id(event.conversation_id))],
    )
    answer: dict[str, Any] = {
        "status": "duplicate" if result.duplicate else "recorded",
        "event": type(event).__name__,
        "conversation_id": event.conversation_id,
    }
    if result.duplicate:
        differs = await _difference(system.store, result.position, event)
        if differs is not None:
            # Not silently dropped: the same conversation id with other content is a bug
            # somewhere (a stand-in reusing ids across runs did exactly this).
            logger.warning(
                "post-call webhook %s for call %s repeats a call already recorded under "
                "that id, with other content (%s): the recorded call stands, this one is "
                "not recorded",
                kind,
                event.conversation_id,
                differs,
            )
            answer["differs"] = differs
    if not result.duplicate and (isinstance(event, CallCompleted) or event.follow_up):
        # Opted out (or unreachable, or with a person): the phone actor records the skip
        # in the conversation (``FirstMessageSkipped``); the answer says it too.
        skipped = skip_reason(await fold_conversation(system.store, event.phone))
        if skipped is not None:
            logger.info("post-call webhook %s for %s: %s", kind, event.phone, skipped)
            answer["follow_up"] = skipped
        system.notify_phone(event.phone)
    return _answer(200, answer)
