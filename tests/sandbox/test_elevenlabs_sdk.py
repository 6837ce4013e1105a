"""Conformance: the official ``elevenlabs`` Python SDK against the stand-in.

The SDK's ``Conversation`` is synchronous and runs its socket in a thread, so these tests use
real time (no autojump clock), run every blocking SDK call in ``trio.to_thread``, wait on
thread-safe queues with short timeouts, and keep an absolute ``fail_after`` over each body.
"""

from __future__ import annotations

import json
import queue
import warnings
from typing import Any

import httpx
import pytest
import trio
from elevenlabs import ElevenLabs
from elevenlabs.errors import BadRequestError
from elevenlabs.types import OutboundCallRecipient

from sandbox.elevenlabs import AgentConfig, CallScript, ElevenLabsStandIn, serve_elevenlabs
from tests.sandbox.test_elevenlabs_rest import SECRET, webhook_receiver

with warnings.catch_warnings():
    # elevenlabs 2.78 imports websockets' deprecated legacy client (and names it in an
    # annotation evaluated at import); the suite turns warnings into errors, so deprecation
    # warnings are ignored for this one import statement only.
    warnings.simplefilter("ignore", DeprecationWarning)
    from elevenlabs.conversational_ai.conversation import (
        Conversation,
        ConversationInitiationData,
    )

API_KEY = "sk_sdk_conformance_key"
WAIT = 5.0  # seconds a single SDK callback may take on a loaded machine


async def take(items: queue.Queue[Any]) -> Any:
    """The next item the SDK's thread put in ``items``, waiting in a worker thread."""
    return await trio.to_thread.run_sync(lambda: items.get(timeout=WAIT))


async def run_text_conversation(standin: ElevenLabsStandIn, *, requires_auth: bool) -> None:
    assert standin.base_url is not None
    with httpx.Client() as http:
        client = ElevenLabs(
            base_url=standin.base_url, api_key=standin.api_key or "unused", httpx_client=http
        )
        conversation_id = await converse(standin, client, requires_auth=requires_auth)
    live = standin.session(conversation_id)
    assert live.text_only is True
    assert live.received[0]["conversation_config_override"] == {"text_only": True}
    assert live.received[0]["source_info"]["source"] == "python_sdk"
    assert live.pongs
    assert live.query["source"] == "python_sdk"


async def converse(standin: ElevenLabsStandIn, client: ElevenLabs, *, requires_auth: bool) -> str:
    """One SDK conversation: greeting, a measured ping, a question; returns its id."""
    responses: queue.Queue[str] = queue.Queue()
    latencies: queue.Queue[int] = queue.Queue()
    conversation = Conversation(
        client,
        "agent_sandbox",
        requires_auth=requires_auth,
        config=ConversationInitiationData(
            dynamic_variables={"call_summary": "The quote for the blue sofa"}
        ),
        callback_agent_response=responses.put,
        callback_latency_measurement=latencies.put,
    )
    # No audio_interface: the SDK sends the top-level text_only override itself.
    await trio.to_thread.run_sync(conversation.start_session)
    try:
        assert await take(responses) == "Hello! How can I help you today?"
        # A latency callback needs a ping whose ping_ms came from the SDK's previous pong.
        assert await take(latencies) >= 1
        await trio.to_thread.run_sync(conversation.send_user_message, "What did we discuss?")
        assert await take(responses) == "We discussed: The quote for the blue sofa"
    finally:
        await trio.to_thread.run_sync(conversation.end_session)
        conversation_id = await trio.to_thread.run_sync(conversation.wait_for_session_end)
    assert isinstance(conversation_id, str)
    return conversation_id


async def test_sdk_holds_a_text_conversation() -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs(ElevenLabsStandIn(ping_interval_seconds=0.05)) as standin:
            await run_text_conversation(standin, requires_auth=False)
            (live,) = standin.sessions.values()
            assert live.conversation.authorization_method == "public"


async def test_sdk_holds_a_signed_url_conversation_with_a_private_agent() -> None:
    standin = ElevenLabsStandIn(api_key=API_KEY, ping_interval_seconds=0.05)
    standin.add_agent(
        AgentConfig(
            "agent_sandbox",
            first_message="Hello! How can I help you today?",
            allowed_overrides={"conversation.text_only"},
            requires_auth=True,
        )
    )
    with trio.fail_after(30):
        async with serve_elevenlabs(standin):
            await run_text_conversation(standin, requires_auth=True)
            (live,) = standin.sessions.values()
            assert live.conversation.authorization_method == "signed_url"


async def test_sdk_rest_client_reads_batches_conversations_and_calls() -> None:
    standin = ElevenLabsStandIn(api_key=API_KEY)
    standin.call_scripts["+15550009"] = CallScript(summary="Wants a callback on Friday.")
    with trio.fail_after(30):
        async with serve_elevenlabs(standin):
            assert standin.base_url is not None
            with httpx.Client() as http:
                client = ElevenLabs(base_url=standin.base_url, api_key=API_KEY, httpx_client=http)
                await use_rest_client(standin, client)


async def use_rest_client(standin: ElevenLabsStandIn, client: ElevenLabs) -> None:
    """Batch calls, conversations, a Twilio call and a signed URL, parsed by the SDK."""
    calls = client.conversational_ai

    created = await trio.to_thread.run_sync(
        lambda: calls.batch_calls.create(
            call_name="sdk",
            agent_id="agent_sandbox",
            agent_phone_number_id="phnum_1",
            recipients=[OutboundCallRecipient(phone_number="+15550009")],
        )
    )
    assert created.status == "pending"
    await standin.advance(60)
    detail = await trio.to_thread.run_sync(lambda: calls.batch_calls.get(created.id))
    assert detail.status == "completed"
    recipient = detail.recipients[0]
    assert recipient.status == "completed"
    listed = await trio.to_thread.run_sync(lambda: calls.batch_calls.list(limit=10))
    assert [b.id for b in listed.batch_calls] == [created.id]

    assert recipient.conversation_id is not None
    conversation_id = recipient.conversation_id
    conversation = await trio.to_thread.run_sync(lambda: calls.conversations.get(conversation_id))
    assert conversation.status == "done"
    assert conversation.analysis is not None
    assert conversation.analysis.transcript_summary == "Wants a callback on Friday."
    assert conversation.metadata.batch_call is not None
    assert conversation.metadata.batch_call.batch_call_recipient_id == recipient.id
    assert conversation.transcript[0].role == "agent"

    outbound = await trio.to_thread.run_sync(
        lambda: calls.twilio.outbound_call(
            agent_id="agent_sandbox",
            agent_phone_number_id="phnum_1",
            to_number="+15550010",
        )
    )
    assert outbound.success is True
    assert outbound.call_sid is not None
    assert outbound.call_sid.startswith("CA")
    page = await trio.to_thread.run_sync(lambda: calls.conversations.list(page_size=1))
    assert page.has_more is True
    signed = await trio.to_thread.run_sync(
        lambda: calls.conversations.get_signed_url(agent_id="agent_sandbox")
    )
    assert "conversation_signature=" in signed.signed_url


async def test_sdk_webhook_verifier_accepts_the_signature_and_rejects_tampering() -> None:
    with httpx.Client() as http:
        verifier = ElevenLabs(api_key="unused", httpx_client=http).webhooks
    with trio.fail_after(30):
        async with (
            webhook_receiver() as receiver,
            serve_elevenlabs(ElevenLabsStandIn(webhook_secret=SECRET)) as standin,
        ):
            standin.webhook_url = receiver.url
            record = await standin.complete_call("+15550011", summary="Send the invoice.")
            ((headers, body),) = receiver.received
    signature = headers["Elevenlabs-Signature"]
    event = verifier.construct_event(body, signature, SECRET)
    assert event["type"] == "post_call_transcription"
    assert event["data"]["conversation_id"] == record.conversation_id
    assert event["data"]["analysis"]["transcript_summary"] == "Send the invoice."

    tampered = body.replace("Send the invoice.", "Send nothing.")
    with pytest.raises(BadRequestError) as rejected:
        verifier.construct_event(tampered, signature, SECRET)
    assert "Signature hash does not match" in json.dumps(rejected.value.body.dict())
    with pytest.raises(BadRequestError):
        verifier.construct_event(body, signature, "wsec_some_other_secret")
