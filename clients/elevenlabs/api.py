"""The ElevenLabs REST calls aftercall makes: batch calling, conversations, outbound calls.

Used by the call monitor (``followup.call_monitor``) and the ``aftercall batch``/``call``
commands. Requests carry ``xi-api-key`` when a key is configured; the key never appears in
a log line, an error or an event (errors quote ElevenLabs' own message, scrubbed).

429 and 5xx answers and transport errors are retried a few times with exponential backoff,
honouring ``Retry-After``; if ElevenLabs stays unavailable the caller gets
``ElevenLabsUnavailable`` and backs off on its own schedule (the monitor waits longer before
its next poll). Any other 4xx is ``ElevenLabsRejected`` at once: a wrong key or an unknown
batch is not fixed by asking again.

Responses are turned into small frozen values (``BatchSummary``, ``Recipient``) by plain
functions that check the shapes of §3 of docs/reference/elevenlabs-agents.md; a
conversation stays a JSON object, read by ``followup.call_rules`` (the post-call webhook
carries the same model).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import httpx
import trio

from actors.retry import backoff_delay, parse_retry_after

logger = logging.getLogger(__name__)

#: Statuses worth asking again: rate limited, overloaded, or a gateway in between.
RETRYABLE_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
#: Longest ElevenLabs error message quoted in an error.
MAX_DETAIL = 300
#: Batch statuses after which nothing changes (unless the batch is retried).
BATCH_TERMINAL = frozenset({"completed", "failed", "cancelled"})


class ElevenLabsError(Exception):
    """Any failure talking to the ElevenLabs REST API."""


class ElevenLabsUnavailable(ElevenLabsError):
    """ElevenLabs did not answer usefully (429, 5xx, connection) after the retries.

    ``retry_after`` is the last ``Retry-After`` it asked for, if any.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ElevenLabsRejected(ElevenLabsError):
    """A 4xx answer: the request is wrong (key, id, body); asking again will not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ElevenLabsNotFound(ElevenLabsRejected):
    """404: the batch or conversation does not exist (or was deleted)."""


class MalformedResponse(ElevenLabsError):
    """A 200 answer whose JSON does not have the documented shape."""


# --- wire values ------------------------------------------------------------------------------


@attrs.frozen
class BatchSummary:
    """A ``BatchCallResponse``: the parts the monitor decides on."""

    id: str
    name: str
    agent_id: str
    status: str
    created_at_unix: int
    retry_count: int
    total_calls_scheduled: int
    total_calls_finished: int

    @property
    def terminal(self) -> bool:
        return self.status in BATCH_TERMINAL


@attrs.frozen
class Recipient:
    """A batch recipient: whom it calls, how far the call is, and its conversation."""

    id: str
    status: str
    phone_number: str | None
    whatsapp_user_id: str | None
    conversation_id: str | None
    updated_at_unix: int | None


@attrs.frozen
class BatchDetail:
    """``BatchCallDetailedResponse``: the batch and its recipients."""

    batch: BatchSummary
    recipients: tuple[Recipient, ...]


@attrs.frozen
class BatchPage:
    """One page of ``GET /v1/convai/batch-calling/workspace`` (newest first)."""

    batches: tuple[BatchSummary, ...]
    next_doc: str | None
    has_more: bool


@attrs.frozen
class OutboundCall:
    """The answer to ``POST /v1/convai/twilio/outbound-call``."""

    success: bool
    message: str
    conversation_id: str | None
    call_sid: str | None


@attrs.frozen
class ApiStatistics:
    requests: int
    retries: int
    failures: int


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedResponse(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedResponse(f"{where}: {key!r} must be a non-empty string")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _int(data: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return int(value)


def parse_batch(data: Any) -> BatchSummary:
    """A ``BatchCallResponse`` object; ``MalformedResponse`` names the wrong field."""
    body = _object(data, "batch")
    where = f"batch {body.get('id')!r}"
    return BatchSummary(
        id=_str(body, "id", "batch"),
        name=_opt_str(body, "name") or "",
        agent_id=_str(body, "agent_id", where),
        status=_str(body, "status", where),
        created_at_unix=_int(body, "created_at_unix"),
        retry_count=_int(body, "retry_count"),
        total_calls_scheduled=_int(body, "total_calls_scheduled"),
        total_calls_finished=_int(body, "total_calls_finished"),
    )


def parse_recipient(data: Any, batch_id: str) -> Recipient:
    body = _object(data, f"batch {batch_id} recipient")
    where = f"batch {batch_id} recipient {body.get('id')!r}"
    updated = body.get("updated_at_unix")
    return Recipient(
        id=_str(body, "id", f"batch {batch_id} recipient"),
        status=_str(body, "status", where),
        phone_number=_opt_str(body, "phone_number"),
        whatsapp_user_id=_opt_str(body, "whatsapp_user_id"),
        conversation_id=_opt_str(body, "conversation_id"),
        updated_at_unix=int(updated) if isinstance(updated, int | float) else None,
    )


def parse_batch_detail(data: Any) -> BatchDetail:
    batch = parse_batch(data)
    recipients = _object(data, "batch").get("recipients")
    if not isinstance(recipients, list):
        raise MalformedResponse(f"batch {batch.id}: 'recipients' must be a list")
    return BatchDetail(batch, tuple(parse_recipient(r, batch.id) for r in recipients))


def parse_batch_page(data: Any) -> BatchPage:
    body = _object(data, "batch list")
    batches = body.get("batch_calls")
    if not isinstance(batches, list):
        raise MalformedResponse("batch list: 'batch_calls' must be a list")
    return BatchPage(
        batches=tuple(parse_batch(b) for b in batches),
        next_doc=_opt_str(body, "next_doc"),
        has_more=body.get("has_more") is True,
    )


def parse_outbound_call(data: Any) -> OutboundCall:
    body = _object(data, "outbound call")
    return OutboundCall(
        success=body.get("success") is True,
        message=str(body.get("message") or ""),
        conversation_id=_opt_str(body, "conversation_id"),
        call_sid=_opt_str(body, "callSid"),
    )


def error_detail(response: httpx.Response, secret: str | None) -> str:
    """ElevenLabs' own words for a refusal (``detail.message``, a 422 list), short and
    scrubbed of the API key."""
    try:
        body = response.json()
    except ValueError:
        # Not ElevenLabs' JSON (a proxy's HTML page, a wrong base URL): its words are noise.
        text = response.reason_phrase or "no JSON answer"
    else:
        detail = body.get("detail", body) if isinstance(body, Mapping) else body
        if isinstance(detail, Mapping):
            text = str(detail.get("message") or detail.get("status") or detail)
        elif isinstance(detail, list):
            text = "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}"
                if isinstance(item, Mapping)
                else str(item)
                for item in detail
            )
        else:
            text = str(detail)
    if secret:
        text = text.replace(secret, "[redacted]")
    return " ".join(text.split())[:MAX_DETAIL] or response.reason_phrase


# --- the client -------------------------------------------------------------------------------


@attrs.define(eq=False)
class ElevenLabsAPI:
    """The REST client, over the process's shared ``httpx.AsyncClient``.

    Attributes:
        base_url: ``https://api.elevenlabs.io`` or a stand-in's URL.
        api_key: Sent as ``xi-api-key``; ``None`` sends none (the stand-in without a key).
        attempts: Tries per request for 429/5xx/transport errors.
        backoff_initial, backoff_max: Seconds between those tries (doubling).
    """

    http: httpx.AsyncClient
    base_url: str
    api_key: str | None = attrs.field(repr=False)
    attempts: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    _requests: int = attrs.field(default=0, init=False)
    _retries: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)

    async def list_batches(
        self, agent_id: str, *, limit: int = 100, last_doc: str | None = None
    ) -> BatchPage:
        """One page of the workspace's batches for ``agent_id``, newest first."""
        params: dict[str, str | int] = {"limit": limit, "agent_id": agent_id}
        if last_doc:
            params["last_doc"] = last_doc
        return parse_batch_page(
            await self._request("GET", "/v1/convai/batch-calling/workspace", params=params)
        )

    async def get_batch(self, batch_id: str) -> BatchDetail:
        return parse_batch_detail(
            await self._request("GET", f"/v1/convai/batch-calling/{_segment(batch_id)}")
        )

    async def get_conversation(self, conversation_id: str) -> Mapping[str, Any]:
        """The conversation (§4), as JSON: ``followup.call_rules`` reads it."""
        data = await self._request("GET", f"/v1/convai/conversations/{_segment(conversation_id)}")
        return _object(data, f"conversation {conversation_id}")

    async def twilio_outbound_call(
        self,
        *,
        agent_id: str,
        agent_phone_number_id: str,
        to_number: str,
        dynamic_variables: Mapping[str, Any] | None = None,
    ) -> OutboundCall:
        """Place one call through ElevenLabs' Twilio integration (§6)."""
        body: dict[str, Any] = {
            "agent_id": agent_id,
            "agent_phone_number_id": agent_phone_number_id,
            "to_number": to_number,
        }
        if dynamic_variables:
            body["conversation_initiation_client_data"] = {
                "dynamic_variables": dict(dynamic_variables)
            }
        return parse_outbound_call(
            await self._request("POST", "/v1/convai/twilio/outbound-call", json=body)
        )

    def statistics(self) -> ApiStatistics:
        return ApiStatistics(self._requests, self._retries, self._failures)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
    ) -> Any:
        headers = {"accept": "application/json"}
        if self.api_key:
            headers["xi-api-key"] = self.api_key
        url = f"{self.base_url.rstrip('/')}{path}"
        what = f"{method} {path}"
        retry_after: float | None = None
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                self._retries += 1
                delay = backoff_delay(
                    attempt, initial=self.backoff_initial, maximum=self.backoff_max
                )
                await trio.sleep(max(delay, min(retry_after or 0.0, self.backoff_max)))
            self._requests += 1
            try:
                response = await self.http.request(
                    method, url, params=params, json=json, headers=headers
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__} reaching ElevenLabs"
                retry_after = None
                logger.info("ElevenLabs %s: %s (attempt %d)", what, problem, attempt + 1)
                continue
            if response.status_code in RETRYABLE_STATUSES:
                retry_after = parse_retry_after(
                    response.headers.get("retry-after"), datetime.now(UTC)
                )
                problem = f"HTTP {response.status_code}: {error_detail(response, self.api_key)}"
                logger.info("ElevenLabs %s: %s (attempt %d)", what, problem, attempt + 1)
                continue
            if response.status_code >= 400:
                self._failures += 1
                detail = error_detail(response, self.api_key)
                message = f"ElevenLabs refused {what}: HTTP {response.status_code}: {detail}"
                if response.status_code == 401:
                    message += " (check ELEVENLABS_API_KEY)"
                if response.status_code == 404:
                    raise ElevenLabsNotFound(message, 404)
                raise ElevenLabsRejected(message, response.status_code)
            try:
                return response.json()
            except ValueError:
                self._failures += 1
                raise MalformedResponse(f"ElevenLabs {what}: the answer is not JSON") from None
        self._failures += 1
        raise ElevenLabsUnavailable(
            f"ElevenLabs {what} failed {self.attempts} times: {problem}", retry_after
        )


def _segment(value: str) -> str:
    """An id as one URL path segment (a CLI argument must not reach another endpoint)."""
    return urllib.parse.quote(value, safe="")
