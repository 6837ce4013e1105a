"""The post-call webhook through the real app: signed deliveries from the ElevenLabs stand-in
become call events; anything unsigned, stale or malformed is refused with nothing appended."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from events.calls import call_event_id
from events.store import EventStore
from sandbox.elevenlabs import ElevenLabsStandIn, Faults, sign
from tests.e2e.harness import Aftercall, of_type, running_aftercall
from web.post_call import PATH

SECRET = "wsec_test_0123456789abcdef"
ANA = "+15551230001"


@asynccontextmanager
async def webhook_aftercall(
    store: EventStore, *, secret: str | None = SECRET, env: dict[str, str] | None = None
) -> AsyncIterator[Aftercall]:
    environ = {"ELEVENLABS_WEBHOOK_SECRET": secret} if secret else {}
    standin = ElevenLabsStandIn(webhook_secret=SECRET)
    async with running_aftercall(store, elevenlabs=standin, env={**environ, **(env or {})}) as ac:
        ac.elevenlabs.webhook_url = f"{ac.url}{PATH}"
        yield ac


def transcription(conversation_id: str = "conv_crafted", **metadata: Any) -> dict[str, Any]:
    return {
        "type": "post_call_transcription",
        "event_timestamp": int(time.time()),
        "data": {
            "agent_id": "agent_sandbox",
            "conversation_id": conversation_id,
            "status": "done",
            "transcript": [{"role": "agent", "message": "Hi", "time_in_call_secs": 0}],
            "metadata": {"start_time_unix_secs": 1_700_000_000, "call_duration_secs": 30}
            | metadata,
            "analysis": {"call_successful": "success", "transcript_summary": "We said hi."},
        },
    }


async def post(ac: Aftercall, body: bytes | str, signature: str | None = "sign") -> httpx.Response:
    raw = body.encode() if isinstance(body, str) else body
    headers = {"content-type": "application/json"}
    if signature == "sign":
        signature = sign(raw.decode(), SECRET, int(time.time()))
    if signature is not None:
        headers["ElevenLabs-Signature"] = signature
    async with httpx.AsyncClient() as http:
        return await http.post(f"{ac.url}{PATH}", content=raw, headers=headers)


async def test_a_finished_call_starts_the_follow_up(store: EventStore) -> None:
    async with webhook_aftercall(store) as ac:
        record = await ac.elevenlabs.complete_call(
            "+1 (555) 123-0001",
            user_turns=("Hello?", "Send me the invoice, please."),
            summary="Ana wants her invoice.",
            dynamic_variables={"user_name": "Ana", "plan": 3, "nested": {"no": 1}},
        )
        [call] = await ac.wait_for(of_type("CallCompleted", ANA))
        await ac.wait_for(of_type("ReplySent", ANA))
        assert ac.elevenlabs.webhook_deliveries[-1].status_code == 200
    assert call.event_id == call_event_id(record.conversation_id)
    assert call.data["source"] == "webhook"
    assert call.data["summary"] == "Ana wants her invoice."
    assert call.data["dynamic_variables"] == {"user_name": "Ana", "plan": 3}
    assert {"role": "user", "message": "Send me the invoice, please."} in call.data["transcript"]
    assert call.data["ended_at"] is not None
    [message] = ac.twilio.received(ANA)
    assert message.body.startswith("Hi Ana, thanks for talking with us")


async def test_a_duplicate_delivery_records_one_call_and_sends_one_message(
    store: EventStore,
) -> None:
    async with webhook_aftercall(store) as ac:
        ac.elevenlabs.set_faults(Faults(duplicate_webhooks=True))
        await ac.elevenlabs.complete_call(ANA)
        await ac.wait_for(of_type("ReplySent", ANA))
        deliveries = ac.elevenlabs.webhook_deliveries
        assert [d.status_code for d in deliveries] == [200, 200]
        assert json.loads((await post(ac, deliveries[0].body)).text)["status"] == "duplicate"
        types = await ac.types(ANA)
    assert types.count("CallCompleted") == 1
    assert len(ac.twilio.received(ANA)) == 1


async def test_a_call_that_never_connected_is_recorded_without_a_message(
    store: EventStore,
) -> None:
    async with webhook_aftercall(store) as ac:
        record = await ac.elevenlabs.fail_call(ANA, outcome="no-answer")
        [failed] = await ac.wait_for(of_type("CallFailed", ANA))
        assert not ac.system.phones.is_active(ANA)
    assert failed.event_id == call_event_id(record.conversation_id)
    assert failed.data["reason"] == "no-answer"
    assert failed.data["follow_up"] is False
    assert ac.twilio.received(ANA) == []


async def test_the_follow_up_flag_is_recorded_on_a_failed_call(store: EventStore) -> None:
    async with webhook_aftercall(store, env={"AFTERCALL_FOLLOW_UP_FAILED_CALLS": "1"}) as ac:
        await ac.elevenlabs.fail_call(ANA, outcome="failed")
        [failed] = await ac.wait_for(of_type("CallFailed", ANA))
    assert failed.data["reason"] == "unknown"
    assert failed.data["follow_up"] is True


def signed(body: bytes, seconds_ago: int = 0, secret: str = SECRET) -> str:
    timestamp = int(time.time()) - seconds_ago
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v0={digest.hexdigest()}"


GOOD = json.dumps(transcription()).encode()


def refusals() -> list[tuple[bytes, str | None, int, str]]:
    """(body, signature header, status, words the reason must contain), signed now."""
    return [
        (GOOD, None, 401, "missing ElevenLabs-Signature"),
        (GOOD, signed(GOOD, secret="wsec_another_secret_xyz"), 401, "does not match the body"),
        (GOOD.replace(b"We said hi", b"We said no"), signed(GOOD), 401, "does not match"),
        (GOOD, "t=abc,v0=00", 401, "has no timestamp"),
        (GOOD, "t=1700000000", 401, "no signature with scheme v0"),
        (GOOD, signed(GOOD, seconds_ago=31 * 60), 401, "s old, outside the 1800 s tolerance"),
        (GOOD, signed(GOOD, seconds_ago=-31 * 60), 401, "in the future"),
        (b'{"type": "post_call_transcr', None, 400, "not JSON"),
        (b"\xff\xfe{}", None, 400, "not JSON"),
        (b"[1, 2]", None, 400, "must be a JSON object"),
        (b'{"data": {}}', None, 400, "has no 'type'"),
        (b'{"type": "post_call_party", "data": {}}', None, 400, "unknown event type"),
        (
            b'{"type": "post_call_transcription", "data": {"agent_id": "a"}}',
            None,
            400,
            "data.conversation_id is missing",
        ),
        (b'{"type": "call_initiation_failure", "data": "busy"}', None, 400, "a JSON object"),
        # The parser recurses: this once raised RecursionError, a 500 ElevenLabs redelivers.
        (b"[" * 100_000 + b"]" * 100_000, None, 400, "nested too deeply"),
        (_nested(40), None, 400, "nested too deeply"),
        (GOOD.replace(b'"status": "done"', b'"status": NaN'), None, 400, "NaN is not"),
        (GOOD.replace(b"We said hi", b"We said \\u0000"), None, 400, "NUL character"),
    ]


def _nested(depth: int) -> bytes:
    """A well-formed transcription with a value ``depth`` levels down its analysis."""
    body = transcription()
    body["data"]["analysis"]["deep"] = json.loads("[" * depth + "]" * depth)
    return json.dumps(body).encode()


async def test_bad_deliveries_are_refused_with_a_reason_and_nothing_appended(
    store: EventStore,
) -> None:
    async with webhook_aftercall(store) as ac:
        head = await store.head()
        for body, signature, status, reason in refusals():
            # Signature cases carry their header; body cases are signed correctly.
            header = signature if status == 401 else signed(body)
            response = await post(ac, body, header)
            assert (response.status_code, reason in response.json()["error"]) == (status, True), (
                body,
                response.text,
            )
            assert SECRET not in response.text
        assert await store.head() == head


async def test_a_conversation_without_a_phone_call_is_ignored(store: EventStore) -> None:
    # aftercall's own WhatsApp text sessions end in the same webhook, with no phone call.
    async with webhook_aftercall(store) as ac:
        head = await store.head()
        response = await post(ac, json.dumps(transcription(phone_call=None)))
        assert response.status_code == 200
        assert response.json() == {
            "status": "ignored",
            "reason": "the conversation has no phone call",
        }
        audio = {"type": "post_call_audio", "data": {"conversation_id": "c", "full_audio": ""}}
        assert (await post(ac, json.dumps(audio))).json()["status"] == "ignored"
        assert await store.head() == head


async def test_a_voicemail_is_a_failed_call(store: EventStore) -> None:
    phone_call = {"type": "twilio", "external_number": ANA, "direction": "outbound"}
    async with webhook_aftercall(store) as ac:
        body = transcription(phone_call=phone_call, termination_reason="Voicemail detected")
        response = await post(ac, json.dumps(body))
        assert response.json()["event"] == "CallFailed"
        [failed] = await ac.wait_for(of_type("CallFailed", ANA))
    assert failed.data["reason"] == "voicemail"


async def test_without_a_secret_nothing_is_accepted(store: EventStore) -> None:
    async with webhook_aftercall(store, secret=None) as ac:
        head = await store.head()
        response = await post(ac, json.dumps(transcription()))
        assert response.status_code == 503
        assert "ELEVENLABS_WEBHOOK_SECRET is not set" in response.json()["error"]
        assert await store.head() == head
