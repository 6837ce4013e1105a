"""The pure parts: the webhook signature, conversation JSON -> call event, batch decisions,
backoff; and the REST client's retries against a real (flaky) server on loopback."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from quart import Response
from quart_trio import QuartTrio

from clients.elevenlabs.api import (
    BatchSummary,
    ElevenLabsAPI,
    ElevenLabsRejected,
    ElevenLabsUnavailable,
    Recipient,
)
from events.batches import BatchFinished, RecipientSettled
from events.calls import CallCompleted, CallFailed
from events.store import EventStore
from followup.call_monitor import MonitorSettings, open_call_monitor
from followup.call_rules import (
    AlreadySettled,
    BatchProgress,
    FetchConversation,
    NotAPhoneCall,
    NotFinished,
    SettleAsIs,
    StillCalling,
    call_from_conversation,
    call_from_failure,
    decide_recipient,
    poll_delay,
    worth_a_look,
)
from sandbox.elevenlabs import sign
from web.post_call import WebhookRejected, verify_signature
from web.serving import serve_asgi

SECRET = "wsec_rules_0123456789"
NOW = 1_800_000_000.0


# --- signature ---------------------------------------------------------------------------------


def test_a_signature_the_official_sdk_accepts_is_accepted() -> None:
    from elevenlabs.client import ElevenLabs

    body = json.dumps({"type": "post_call_transcription", "data": {"x": "é"}})
    header = sign(body, SECRET, int(time.time()))
    verifier = ElevenLabs(api_key="unused").webhooks
    assert verifier.construct_event(body, header, SECRET)["data"] == {"x": "é"}
    verify_signature(body.encode(), header, SECRET, time.time())


def test_any_v0_may_match_and_spaces_are_allowed() -> None:
    body = b'{"type": "x"}'
    good = sign(body.decode(), SECRET, int(NOW)).split(",")[1]
    verify_signature(body, f"t={int(NOW)}, v0=deadbeef, {good}", SECRET, NOW)
    with pytest.raises(WebhookRejected) as refused:
        verify_signature(body, f"t={int(NOW)},v0=deadbeef", SECRET, NOW)
    assert refused.value.status == 401
    assert SECRET not in refused.value.reason


def test_the_tolerance_is_thirty_minutes_either_way() -> None:
    body = b"{}"
    for offset in (-1800, 1800):
        verify_signature(body, sign("{}", SECRET, int(NOW) + offset), SECRET, NOW)
    for offset in (-1801, 1801):
        with pytest.raises(WebhookRejected):
            verify_signature(body, sign("{}", SECRET, int(NOW) + offset), SECRET, NOW)


# --- conversation JSON -> event ----------------------------------------------------------------


def conversation(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "agent_id": "agent_1",
        "conversation_id": "conv_1",
        "status": "done",
        "transcript": [
            {"role": "agent", "message": "Hello Ana", "time_in_call_secs": 0},
            {"role": "agent", "message": None, "tool_calls": [{}], "time_in_call_secs": 1},
            {"role": "user", "message": "  Hi  ", "time_in_call_secs": 2},
        ],
        "metadata": {
            "start_time_unix_secs": 1_700_000_000,
            "call_duration_secs": 60,
            "phone_call": {"type": "twilio", "external_number": "+44 20 7946 0000"},
            "batch_call": {"batch_call_id": "btcal_1", "batch_call_recipient_id": "r1"},
            "termination_reason": "Call ended by remote party",
        },
        "analysis": {"call_successful": "success", "transcript_summary": " Asked for help. "},
        "conversation_initiation_client_data": {
            "dynamic_variables": {
                "user_name": "Ana",
                "system__conversation_id": "conv_1",
                "order": 42,
                "tags": ["a"],
                "missing": None,
            }
        },
    }
    data.update(changes)
    return data


def test_a_done_conversation_becomes_call_completed() -> None:
    event = call_from_conversation(conversation(), source="webhook")
    assert isinstance(event, CallCompleted)
    assert event.phone == "+442079460000"
    assert event.summary == "Asked for help."
    assert [(t.role, t.message) for t in event.transcript] == [
        ("agent", "Hello Ana"),
        ("user", "Hi"),
    ]
    assert event.dynamic_variables == {"user_name": "Ana", "order": 42}
    assert (event.batch_id, event.recipient_id) == ("btcal_1", "r1")
    assert event.ended_at is not None
    assert event.ended_at.timestamp() == 1_700_000_060


def test_what_is_not_a_call_to_follow_up() -> None:
    whatsapp = conversation()
    whatsapp["metadata"] = {"whatsapp": {"whatsapp_user_id": "x"}}
    assert isinstance(call_from_conversation(whatsapp, source="webhook"), NotAPhoneCall)
    sip = conversation()
    sip["metadata"]["phone_call"]["external_number"] = "sip:ana@example.com"
    refused = call_from_conversation(sip, source="webhook")
    assert isinstance(refused, NotAPhoneCall)
    assert "not a phone number" in refused.reason
    # The batch recipient's number stands in when the conversation has none.
    fallback = call_from_conversation(whatsapp, source="cli", fallback_phone="+15550001111")
    assert isinstance(fallback, CallCompleted)
    assert fallback.phone == "+15550001111"


def test_unfinished_voicemail_and_failed_conversations() -> None:
    processing = conversation(status="processing")
    assert call_from_conversation(processing, source="batch_monitor", require_done=True) == (
        NotFinished("conv_1", "processing")
    )
    voicemail = conversation()
    voicemail["metadata"]["termination_reason"] = "Voicemail detected"
    event = call_from_conversation(voicemail, source="webhook")
    assert isinstance(event, CallFailed)
    assert event.reason == "voicemail"
    failed = call_from_conversation(conversation(status="failed"), source="webhook")
    assert isinstance(failed, CallFailed)
    assert failed.reason == "failed"


def test_call_initiation_failures() -> None:
    twilio = {
        "agent_id": "a",
        "conversation_id": "c",
        "failure_reason": "busy",
        "metadata": {"type": "twilio", "body": {"To": "+15551112222", "CallStatus": "busy"}},
    }
    event = call_from_failure(twilio, source="webhook")
    assert isinstance(event, CallFailed)
    assert (event.phone, event.reason) == ("+15551112222", "busy")
    sip = twilio | {
        "failure_reason": "rejected",
        "metadata": {"type": "sip", "body": {"to_number": "+15551113333"}},
    }
    event = call_from_failure(sip, source="webhook")
    assert isinstance(event, CallFailed)
    assert (event.phone, event.reason) == ("+15551113333", "unknown")
    assert isinstance(call_from_failure(twilio | {"metadata": {}}, source="webhook"), NotAPhoneCall)


# --- batch decisions ----------------------------------------------------------------------------


def recipient(status: str, conversation_id: str | None = "conv_r") -> Recipient:
    return Recipient("r1", status, "+15550000001", None, conversation_id, 0)


def batch(status: str = "completed", retry_count: int = 0, created: int = 1000) -> BatchSummary:
    return BatchSummary("btcal_1", "b", "agent_1", status, created, retry_count, 1, 1)


def settled(conversation_id: str | None) -> RecipientSettled:
    from datetime import UTC, datetime

    return RecipientSettled(
        "btcal_1", "r1", conversation_id, None, "failed", "recorded", datetime.now(UTC)
    )


def test_recipient_decisions() -> None:
    progress = BatchProgress("btcal_1")
    for status in ("pending", "dispatched", "initiated", "in_progress", "brand_new_status"):
        assert isinstance(decide_recipient(recipient(status), progress), StillCalling)
    assert isinstance(decide_recipient(recipient("completed"), progress), FetchConversation)
    for status in ("voicemail", "failed", "cancelled"):
        step = decide_recipient(recipient(status), progress)
        assert isinstance(step, SettleAsIs)
        assert step.outcome == status
    progress.settled[("r1", "conv_r")] = settled("conv_r")
    assert isinstance(decide_recipient(recipient("failed"), progress), AlreadySettled)
    # A batch retry calls the recipient again, with a new conversation: settled anew.
    assert isinstance(
        decide_recipient(recipient("completed", "conv_new"), progress), FetchConversation
    )


def test_which_batches_are_looked_at() -> None:
    from datetime import UTC, datetime

    fresh = BatchProgress("btcal_1")
    assert worth_a_look(batch(created=2000), fresh, watching_since_unix=1500)
    assert not worth_a_look(batch(created=1000), fresh, watching_since_unix=1500)
    followed = BatchProgress("btcal_1", seen=True)
    assert worth_a_look(batch(created=1000), followed, watching_since_unix=1500)
    done = BatchProgress(
        "btcal_1",
        seen=True,
        finished=BatchFinished("btcal_1", "completed", 0, 1, 0, 0, 0, datetime.now(UTC)),
    )
    assert not worth_a_look(batch(), done, 0)
    assert worth_a_look(batch("in_progress", retry_count=1), done, 0)


def test_poll_delay_doubles_honours_retry_after_and_is_capped() -> None:
    assert [poll_delay(5, n, maximum=60) for n in range(6)] == [5, 10, 20, 40, 60, 60]
    assert poll_delay(5, 1, retry_after=30, maximum=60) == 30
    assert poll_delay(5, 1, retry_after=3600, maximum=60) == 60
    assert poll_delay(5, 10_000, maximum=60) == 60


# --- the REST client and the monitor against a flaky ElevenLabs ---------------------------------


def flaky_elevenlabs(
    statuses: list[int], arrivals: list[float], arrived: Callable[[], None] = lambda: None
) -> QuartTrio:
    """Answers each request with the next status (the last one repeats): 200 is an empty
    batch list, anything else an ElevenLabs-style error naming the key it was sent."""
    app = QuartTrio("flaky")

    @app.route("/v1/convai/batch-calling/workspace")
    async def workspace() -> Response:
        from quart import request

        arrivals.append(trio.current_time())
        arrived()
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        if status == 200:
            body: dict[str, Any] = {"batch_calls": [], "next_doc": None, "has_more": False}
        else:
            key = request.headers.get("xi-api-key")
            body = {"detail": {"status": "busy", "message": f"no, {key}"}}
        headers = {"Retry-After": "0"} if status == 429 else {}
        return Response(json.dumps(body), status=status, headers=headers)

    return app


async def test_the_client_retries_429_and_5xx_then_gives_up() -> None:
    arrivals: list[float] = []
    async with (
        serve_asgi(flaky_elevenlabs([429, 503, 200], arrivals)) as url,
        httpx.AsyncClient() as http,
    ):
        api = ElevenLabsAPI(http, url, "xi_secret_key", backoff_initial=0.01)
        page = await api.list_batches("agent_1")
        assert page.batches == ()
        assert len(arrivals) == 3
        assert api.statistics().retries == 2
    arrivals.clear()
    async with serve_asgi(flaky_elevenlabs([500], arrivals)) as url, httpx.AsyncClient() as http:
        api = ElevenLabsAPI(http, url, "xi_secret_key", attempts=2, backoff_initial=0.01)
        with pytest.raises(ElevenLabsUnavailable) as unavailable:
            await api.list_batches("agent_1")
    assert len(arrivals) == 2
    assert "xi_secret_key" not in str(unavailable.value)
    assert "[redacted]" in str(unavailable.value)


async def test_a_4xx_is_not_retried() -> None:
    arrivals: list[float] = []
    async with serve_asgi(flaky_elevenlabs([403], arrivals)) as url, httpx.AsyncClient() as http:
        api = ElevenLabsAPI(http, url, None, backoff_initial=0.01)
        with pytest.raises(ElevenLabsRejected) as rejected:
            await api.list_batches("agent_1")
    assert rejected.value.status == 403
    assert len(arrivals) == 1


async def test_the_monitor_backs_off_while_elevenlabs_fails_then_recovers(
    store: EventStore,
) -> None:
    arrivals: list[float] = []
    enough = trio.Event()

    def arrived() -> None:
        if len(arrivals) >= 8:  # five failures, then two good polls, then one more
            enough.set()

    async with (
        serve_asgi(flaky_elevenlabs([503] * 5 + [200], arrivals, arrived)) as url,
        httpx.AsyncClient() as http,
    ):
        api = ElevenLabsAPI(http, url, None, attempts=1)
        settings = MonitorSettings("agent_1", poll_seconds=0.01, max_backoff=0.08)
        async with open_call_monitor(store, api, settings, lambda phone: None) as monitor:
            with trio.fail_after(10):
                await enough.wait()
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # After failures 1..5 the monitor waits 0.02, 0.04, 0.08 (the cap), 0.08, 0.08 s.
    for gap, least in zip(gaps, [0.02, 0.04, 0.08, 0.08, 0.08, 0.01], strict=False):
        assert gap >= least * 0.99
    assert monitor.status.failures_in_a_row == 0
    assert monitor.status.last_error is None
