"""The ElevenLabs stand-in's REST API, call clock, post-call webhooks and ``/_sandbox`` routes.

Real sockets on 127.0.0.1 (port 0) with httpx; the stand-in clock moves only through
``advance()``; webhook retries run on trio's clock under ``autojump_clock``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from quart import Response, request
from quart_trio import QuartTrio

from sandbox.elevenlabs import (
    AgentConfig,
    CallScript,
    ElevenLabsStandIn,
    Faults,
    serve_elevenlabs,
    sign,
)
from tests.sandbox.test_elevenlabs_ws import ask, next_event, session
from web.serving import serve_asgi

API_KEY = "sk_sandbox_test_key"
SECRET = "wsec_0123456789abcdef"
Clock = trio.testing.MockClock


@attrs.define
class WebhookReceiver:
    """Records every POST; answers with ``statuses`` in order, then 200."""

    statuses: list[int] = attrs.field(factory=list)
    received: list[tuple[dict[str, str], str]] = attrs.field(factory=list)
    url: str = ""

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@asynccontextmanager
async def webhook_receiver(statuses: list[int] | None = None) -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(statuses or [])
    app = QuartTrio("webhook_receiver")

    @app.post("/hook")
    async def hook() -> Response:
        body = await request.get_data(as_text=True)
        assert isinstance(body, str)  # quart's str overload needs all three arguments spelled out
        receiver.received.append((dict(request.headers), body))
        return Response("", status=receiver.statuses.pop(0) if receiver.statuses else 200)

    async with serve_asgi(app) as base_url:
        receiver.url = base_url + "/hook"
        yield receiver


@asynccontextmanager
async def served(
    standin: ElevenLabsStandIn | None = None, statuses: list[int] | None = None
) -> AsyncIterator[tuple[ElevenLabsStandIn, httpx.AsyncClient, WebhookReceiver]]:
    """The stand-in wired to a webhook receiver, and an httpx client on its base URL."""
    standin = standin or ElevenLabsStandIn(webhook_secret=SECRET)
    async with (
        webhook_receiver(statuses) as receiver,
        serve_elevenlabs(standin) as running,
    ):
        running.webhook_url = receiver.url
        assert running.base_url is not None
        headers = {"xi-api-key": running.api_key} if running.api_key else {}
        async with httpx.AsyncClient(base_url=running.base_url, headers=headers) as http:
            yield running, http, receiver


def assert_signed(headers: dict[str, str], body: str, secret: str = SECRET) -> None:
    signature = headers["Elevenlabs-Signature"]
    timestamp = int(signature.split(",")[0].removeprefix("t="))
    assert signature == sign(body, secret, timestamp)


async def submit(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    payload = {"call_name": "Follow-ups", "agent_id": "agent_sandbox", **body}
    response = await http.post("/v1/convai/batch-calling/submit", json=payload)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def get_batch(http: httpx.AsyncClient, batch_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/convai/batch-calling/{batch_id}")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def get_conversation(http: httpx.AsyncClient, conversation_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/convai/conversations/{conversation_id}")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


# --- auth -------------------------------------------------------------------------------------

AUTHED_ROUTES = [
    ("GET", "/v1/convai/conversation/get-signed-url?agent_id=agent_sandbox"),
    ("GET", "/v1/convai/conversation/get_signed_url?agent_id=agent_sandbox"),
    ("POST", "/v1/convai/batch-calling/submit"),
    ("GET", "/v1/convai/batch-calling/workspace"),
    ("GET", "/v1/convai/batch-calling/btcal_x"),
    ("GET", "/v1/convai/conversations"),
    ("GET", "/v1/convai/conversations/conv_x"),
    ("POST", "/v1/convai/twilio/outbound-call"),
]


async def test_rest_without_the_api_key_is_401(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served(ElevenLabsStandIn(api_key=API_KEY)) as (standin, _, _):
            assert standin.base_url is not None
            for key in (None, "sk_wrong"):
                headers = {"xi-api-key": key} if key else {}
                async with httpx.AsyncClient(base_url=standin.base_url, headers=headers) as http:
                    for method, path in AUTHED_ROUTES:
                        response = await http.request(method, path, json={})
                        assert response.status_code == 401, (key, path)
                        assert response.json() == {
                            "detail": {"status": "invalid_api_key", "message": "Invalid API key"}
                        }
                        assert API_KEY not in response.text


async def test_rest_with_the_key_and_sandbox_without(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served(ElevenLabsStandIn(api_key=API_KEY)) as (_, http, _):
            ok = await http.get("/v1/convai/conversations")
            assert ok.status_code == 200
            assert ok.json() == {"conversations": [], "next_cursor": None, "has_more": False}
            async with httpx.AsyncClient(base_url=http.base_url) as anonymous:
                assert (await anonymous.get("/_sandbox/agents")).status_code == 200


# --- signed URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["get-signed-url", "get_signed_url"])
async def test_signed_url_opens_a_session(autojump_clock: Clock, path: str) -> None:
    with trio.fail_after(30):
        standin = ElevenLabsStandIn(api_key=API_KEY)
        standin.add_agent(
            AgentConfig(
                "agent_private",
                requires_auth=True,
                first_message="Private hello",
                allowed_overrides={"conversation.text_only"},
            )
        )
        async with served(standin) as (standin, http, _):
            response = await http.get(
                f"/v1/convai/conversation/{path}",
                params={"agent_id": "agent_private", "include_conversation_id": "true"},
            )
            assert response.status_code == 200
            signed_url = response.json()["signed_url"]
            assert standin.base_url is not None
            prefix = standin.base_url.replace("http://", "ws://") + "/v1/convai/conversation?"
            assert signed_url.startswith(prefix)
            query = signed_url.removeprefix(prefix)
            async with session(standin, query=query) as (ws, conversation_id):
                assert f"conversation_id={conversation_id}" in query
                assert (await next_event(ws))["agent_response_event"]["agent_response"] == (
                    "Private hello"
                )


async def test_signed_url_errors_and_refusals(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served() as (standin, http, _):
            url = "/v1/convai/conversation/get-signed-url"
            missing = await http.get(url)
            assert missing.status_code == 422
            assert missing.json()["detail"][0]["loc"] == ["query", "agent_id"]
            assert (await http.get(url, params={"agent_id": "nope"})).status_code == 404
            standin.set_faults(Faults(refuse_status=429, refuse_count=1), agent_id="agent_sandbox")
            refused = await http.get(url, params={"agent_id": "agent_sandbox"})
            assert refused.status_code == 429
            assert refused.json()["detail"]["status"] == "too_many_concurrent_requests"
            standin.set_faults(Faults(refuse_status=503))
            assert (await http.get(url, params={"agent_id": "agent_sandbox"})).status_code == 503
            standin.set_faults(Faults())
            assert (await http.get(url, params={"agent_id": "agent_sandbox"})).status_code == 200


# --- batches ---------------------------------------------------------------------------------


async def test_a_batch_recipient_moves_through_every_status(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served() as (standin, http, receiver):
            standin.call_scripts["+15550001"] = CallScript(
                user_turns=("Hi, who is this?", "What did we discuss?"),
                summary="Ana wants the quote on WhatsApp.",
            )
            batch = await submit(
                http,
                agent_phone_number_id="phnum_1",
                recipients=[
                    {
                        "phone_number": "+15550001",
                        "conversation_initiation_client_data": {
                            "dynamic_variables": {"call_summary": "an earlier chat"}
                        },
                    }
                ],
            )
            assert batch["id"].startswith("btcal_")
            assert batch["status"] == "pending"
            assert batch["phone_provider"] == "twilio"
            assert batch["total_calls_scheduled"] == 1
            assert batch["telephony_call_config"] == {
                "ringing_timeout_secs": 60,
                "twilio_call_recording_enabled": False,
            }
            seen: list[tuple[str, str, str | None]] = []
            for seconds in (0, 1, 5, 30, 5):
                await standin.advance(seconds)
                detail = await get_batch(http, batch["id"])
                recipient = detail["recipients"][0]
                conversation_status = None
                if recipient["conversation_id"]:
                    conversation = await get_conversation(http, recipient["conversation_id"])
                    conversation_status = conversation["status"]
                seen.append((detail["status"], recipient["status"], conversation_status))
            assert seen == [
                ("in_progress", "dispatched", None),
                ("in_progress", "initiated", "initiated"),
                ("in_progress", "in_progress", "in-progress"),
                ("completed", "completed", "processing"),
                ("completed", "completed", "done"),
            ]
            assert detail["total_calls_finished"] == 1
            assert detail["total_calls_dispatched"] == 1
            conversation_id = recipient["conversation_id"]
            conversation = await get_conversation(http, conversation_id)
            assert conversation["metadata"]["batch_call"] == {
                "batch_call_id": batch["id"],
                "batch_call_recipient_id": recipient["id"],
            }
            assert conversation["metadata"]["phone_call"]["external_number"] == "+15550001"
            assert conversation["metadata"]["phone_call"]["call_sid"].startswith("CA")
            assert conversation["analysis"]["transcript_summary"] == (
                "Ana wants the quote on WhatsApp."
            )
            assert conversation["analysis"]["call_successful"] == "success"
            messages = [(t["role"], t["message"]) for t in conversation["transcript"]]
            assert messages == [
                ("agent", "Hello! How can I help you today?"),
                ("user", "Hi, who is this?"),
                ("agent", "You said: Hi, who is this?"),
                ("user", "What did we discuss?"),
                ("agent", "We discussed: an earlier chat"),
            ]
            ((headers, body),) = receiver.received
            assert_signed(headers, body)
            webhook = json.loads(body)
            assert webhook["type"] == "post_call_transcription"
            assert isinstance(webhook["event_timestamp"], int)
            assert webhook["data"] == conversation


async def test_outcomes_failures_and_retry(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served() as (standin, http, receiver):
            standin.call_scripts["+1voicemail"] = CallScript(outcomes=("voicemail", "completed"))
            standin.call_scripts["+1failed"] = CallScript(outcomes=("failed",))
            standin.call_scripts["+1silent"] = CallScript(outcomes=("no-answer", "completed"))
            batch = await submit(
                http,
                recipients=[
                    {"phone_number": number}
                    for number in ("+1ok", "+1voicemail", "+1failed", "+1silent")
                ],
                telephony_call_config={"ringing_timeout_secs": 20},
            )
            await standin.advance(100)
            detail = await get_batch(http, batch["id"])
            assert detail["status"] == "completed"
            statuses = {r["phone_number"]: r["status"] for r in detail["recipients"]}
            assert statuses == {
                "+1ok": "completed",
                "+1voicemail": "voicemail",
                "+1failed": "failed",
                "+1silent": "failed",
            }
            failures = {
                b["data"]["metadata"]["body"]["To"]: b
                for b in receiver.bodies()
                if b["type"] == "call_initiation_failure"
            }
            assert failures["+1silent"]["data"]["failure_reason"] == "no-answer"
            assert failures["+1failed"]["data"]["failure_reason"] == "unknown"
            body = failures["+1silent"]["data"]["metadata"]["body"]
            assert body["CallStatus"] == "no-answer"
            assert body["Direction"] == "outbound-api"
            assert failures["+1silent"]["data"]["metadata"]["type"] == "twilio"
            transcribed = [b for b in receiver.bodies() if b["type"] == "post_call_transcription"]
            assert len(transcribed) == 2  # voicemail is transcribed, not a failure
            silent = next(r for r in detail["recipients"] if r["phone_number"] == "+1silent")
            failed_conversation = await get_conversation(http, silent["conversation_id"])
            assert failed_conversation["status"] == "failed"

            retried = (await http.post(f"/v1/convai/batch-calling/{batch['id']}/retry")).json()
            assert retried["retry_count"] == 1
            assert retried["status"] == "in_progress"
            await standin.advance(100)
            detail = await get_batch(http, batch["id"])
            statuses = {r["phone_number"]: r["status"] for r in detail["recipients"]}
            assert statuses == {
                "+1ok": "completed",
                "+1voicemail": "completed",
                "+1failed": "failed",
                "+1silent": "completed",
            }
            assert (
                silent["conversation_id"]
                != next(r for r in detail["recipients"] if r["phone_number"] == "+1silent")[
                    "conversation_id"
                ]
            )


async def test_no_answer_rings_for_the_ringing_timeout(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served() as (standin, http, _):
            standin.call_scripts["+1silent"] = CallScript(outcomes=("no-answer",))
            batch = await submit(
                http,
                recipients=[{"phone_number": "+1silent"}],
                telephony_call_config={"ringing_timeout_secs": 45},
            )
            await standin.advance(1 + 44)  # dispatch -> initiated, then 44 s of ringing
            assert (await get_batch(http, batch["id"]))["recipients"][0]["status"] == "initiated"
            await standin.advance(1)
            assert (await get_batch(http, batch["id"]))["recipients"][0]["status"] == "failed"


async def test_concurrency_limit_and_scheduled_start(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served() as (standin, http, _):
            batch = await submit(
                http,
                recipients=[{"phone_number": "+1a"}, {"phone_number": "+1b"}],
                target_concurrency_limit=1,
                scheduled_time_unix=standin.now_unix + 60,
            )
            await standin.advance(59)
            detail = await get_batch(http, batch["id"])
            assert detail["status"] == "pending"
            assert [r["status"] for r in detail["recipients"]] == ["pending", "pending"]
            await standin.advance(1)
            detail = await get_batch(http, batch["id"])
            assert [r["status"] for r in detail["recipients"]] == ["dispatched", "pending"]
            await standin.advance(36)  # 1 + 5 + 30: the first call ends
            detail = await get_batch(http, batch["id"])
            assert [r["status"] for r in detail["recipients"]] == ["completed", "dispatched"]
            await standin.advance(36)
            assert (await get_batch(http, batch["id"]))["status"] == "completed"


async def test_cancel_list_and_delete(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served() as (standin, http, receiver):
            first = await submit(http, call_name="one", recipients=[{"phone_number": "+1a"}])
            second = await submit(
                http,
                call_name="two",
                recipients=[{"phone_number": "+1b"}, {"phone_number": "+1c"}],
                target_concurrency_limit=1,
            )
            await standin.advance(3)
            cancelled = (await http.post(f"/v1/convai/batch-calling/{second['id']}/cancel")).json()
            assert cancelled["status"] == "cancelled"
            detail = await get_batch(http, second["id"])
            assert [r["status"] for r in detail["recipients"]] == ["cancelled", "cancelled"]
            in_flight = detail["recipients"][0]["conversation_id"]
            assert (await get_conversation(http, in_flight))["status"] == "failed"
            await standin.advance(100)
            assert (await get_batch(http, second["id"]))["status"] == "cancelled"
            assert {b["data"]["conversation_id"] for b in receiver.bodies()} == {
                (await get_batch(http, first["id"]))["recipients"][0]["conversation_id"]
            }

            page = (
                await http.get("/v1/convai/batch-calling/workspace", params={"limit": 1})
            ).json()
            assert [b["name"] for b in page["batch_calls"]] == ["two"]
            assert page["has_more"] is True
            rest = (
                await http.get(
                    "/v1/convai/batch-calling/workspace", params={"last_doc": page["next_doc"]}
                )
            ).json()
            assert [b["name"] for b in rest["batch_calls"]] == ["one"]
            assert rest == {"batch_calls": rest["batch_calls"], "next_doc": None, "has_more": False}

            assert (await http.delete(f"/v1/convai/batch-calling/{first['id']}")).status_code == 204
            assert (await http.get(f"/v1/convai/batch-calling/{first['id']}")).status_code == 404


async def test_batch_validation(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served() as (_, http, _):
            missing = await http.post("/v1/convai/batch-calling/submit", json={"call_name": "x"})
            assert missing.status_code == 422
            assert {tuple(d["loc"]) for d in missing.json()["detail"]} == {
                ("body", "agent_id"),
                ("body", "recipients"),
            }
            not_json = await http.post("/v1/convai/batch-calling/submit", content=b"{")
            assert not_json.status_code == 422
            unknown = await http.post(
                "/v1/convai/batch-calling/submit",
                json={"call_name": "x", "agent_id": "agent_nobody", "recipients": []},
            )
            assert unknown.status_code == 404
            refused = await submit(
                http,
                recipients=[
                    {
                        "phone_number": "+1a",
                        "conversation_initiation_client_data": {
                            "conversation_config_override": {"agent": {"language": "fr"}}
                        },
                    }
                ],
            )
            assert refused["status"] == "failed"
            detail = await get_batch(http, refused["id"])
            assert [r["status"] for r in detail["recipients"]] == ["failed"]


# --- conversations and Twilio outbound calls ---------------------------------------------------


async def test_twilio_outbound_call_and_conversation_list(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served() as (standin, http, receiver):
            response = await http.post(
                "/v1/convai/twilio/outbound-call",
                json={
                    "agent_id": "agent_sandbox",
                    "agent_phone_number_id": "phnum_1",
                    "to_number": "+15550002",
                    "conversation_initiation_client_data": {"user_id": "ana"},
                },
            )
            assert response.status_code == 200
            result = response.json()
            assert set(result) == {"success", "message", "conversation_id", "callSid"}
            assert result["success"] is True
            conversation = await get_conversation(http, result["conversation_id"])
            assert conversation["status"] == "initiated"
            assert conversation["metadata"]["phone_call"]["call_sid"] == result["callSid"]
            assert conversation["metadata"]["batch_call"] is None
            await standin.advance(40)
            conversation = await get_conversation(http, result["conversation_id"])
            assert conversation["status"] == "done"
            assert conversation["user_id"] == "ana"
            assert receiver.bodies()[0]["data"]["conversation_id"] == result["conversation_id"]

            listed = (await http.get("/v1/convai/conversations")).json()
            assert [c["conversation_id"] for c in listed["conversations"]] == [
                result["conversation_id"]
            ]
            assert "transcript_summary" not in listed["conversations"][0]
            included = (
                await http.get("/v1/convai/conversations", params={"summary_mode": "include"})
            ).json()
            assert included["conversations"][0]["transcript_summary"].startswith("The user said:")
            assert included["conversations"][0]["message_count"] == 5
            assert (
                await http.get("/v1/convai/conversations", params={"agent_id": "agent_x"})
            ).json()["conversations"] == []

            missing = await http.post("/v1/convai/twilio/outbound-call", json={"agent_id": "a"})
            assert missing.status_code == 422
            forbidden = await http.post(
                "/v1/convai/twilio/outbound-call",
                json={
                    "agent_id": "agent_sandbox",
                    "agent_phone_number_id": "phnum_1",
                    "to_number": "+1",
                    "conversation_initiation_client_data": {
                        "conversation_config_override": {"tts": {"voice_id": "v"}}
                    },
                },
            )
            assert forbidden.status_code == 400
            assert forbidden.json()["detail"]["status"] == "override_error"
            assert (await http.get("/v1/convai/conversations/conv_nope")).status_code == 404


# --- webhooks ----------------------------------------------------------------------------------


async def test_webhook_retries_on_non_200_then_stops(autojump_clock: Clock) -> None:
    with trio.fail_after(60):
        async with served(statuses=[500, 503]) as (standin, _, receiver):
            standin.webhook_retry_delays = (1.0, 2.0, 4.0)
            started = trio.current_time()
            await standin.complete_call("+1a")
            assert len(receiver.received) == 3
            assert trio.current_time() - started == pytest.approx(3.0, abs=0.1)
            attempts = [(d.attempt, d.status_code) for d in standin.webhook_deliveries]
            assert attempts == [(1, 500), (2, 503), (3, 200)]
            for headers, body in receiver.received:
                assert_signed(headers, body)


async def test_webhook_without_retries_tries_once(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served(statuses=[500]) as (standin, _, receiver):
            await standin.fail_call("+1a")
            assert len(receiver.received) == 1
            assert receiver.bodies()[0]["type"] == "call_initiation_failure"


async def test_duplicate_webhook_fault_delivers_twice(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served() as (standin, _, receiver):
            standin.set_faults(Faults(duplicate_webhooks=True), agent_id="agent_sandbox")
            record = await standin.complete_call("+1a", summary="twice")
            assert len(receiver.received) == 2
            first, second = receiver.bodies()
            assert first == second
            assert first["data"]["conversation_id"] == record.conversation_id
            assert [d.copy for d in standin.webhook_deliveries] == [1, 2]


async def test_unsigned_without_secret_and_event_filter(autojump_clock: Clock) -> None:
    with trio.fail_after(30):
        async with served(ElevenLabsStandIn()) as (standin, _, receiver):
            await standin.complete_call("+1a")
            ((headers, _),) = receiver.received
            assert "Elevenlabs-Signature" not in headers
            standin.webhook_events = frozenset({"transcript"})
            await standin.fail_call("+1b")
            assert len(receiver.received) == 1


async def test_a_websocket_session_sends_its_post_call_webhook_when_done(
    autojump_clock: Clock,
) -> None:
    with trio.fail_after(30):
        async with served() as (standin, _, receiver):
            async with session(standin) as (ws, conversation_id):
                await next_event(ws)
                await ask(ws, "thanks, bye")
            await trio.testing.wait_all_tasks_blocked()
            assert receiver.received == []
            await standin.advance(standin.call_timing.processing_seconds)
            ((headers, body),) = receiver.received
            assert_signed(headers, body)
            data = json.loads(body)["data"]
            assert data["conversation_id"] == conversation_id
            assert data["metadata"]["text_only"] is True
            assert data["metadata"]["phone_call"] is None
            assert data["conversation_initiation_client_data"]["source_info"]["source"] == (
                "python_sdk"
            )


# --- /_sandbox ---------------------------------------------------------------------------------


async def test_control_api_drives_agents_faults_clock_and_calls(autojump_clock: Clock) -> None:
    with trio.fail_after(60):
        async with served() as (standin, http, receiver):
            put = await http.put(
                "/_sandbox/agents/agent_scripted",
                json={
                    "first_message": "",
                    "allowed_overrides": ["conversation.text_only"],
                    "replies": ["first", "second"],
                    "stream_text_parts": True,
                },
            )
            assert put.status_code == 200
            assert put.json()["brain"] == "custom"
            bad = await http.put("/_sandbox/agents/x", json={"colour": "red"})
            assert bad.status_code == 422

            async with session(standin, query="agent_id=agent_scripted") as (ws, conversation_id):
                await ws.send_message(json.dumps({"type": "user_message", "text": "q"}))
                events = [await next_event(ws) for _ in range(4)]
                assert events[-1]["agent_response_event"]["agent_response"] == "first"
                faults = await http.put(
                    f"/_sandbox/sessions/{conversation_id}/faults", json={"empty_answer": True}
                )
                assert faults.json()["empty_answer"] is True
                await ws.send_message(json.dumps({"type": "user_message", "text": "q"}))
                events = [await next_event(ws) for _ in range(4)]
                assert events[-1]["agent_response_event"]["agent_response"] == ""
                correction = await http.post(
                    f"/_sandbox/sessions/{conversation_id}/correction",
                    json={"corrected_text": "fixed"},
                )
                assert correction.status_code == 200
                assert (await next_event(ws))["type"] == "agent_response_correction"
                live = (await http.get(f"/_sandbox/sessions/{conversation_id}")).json()
                assert [t["text"] for t in live["turns"]] == ["q", "first", "q", "fixed"]
                assert live["received"][0]["type"] == "conversation_initiation_client_data"
            sessions = (await http.get("/_sandbox/sessions")).json()
            assert [s["conversation_id"] for s in sessions] == [conversation_id]

            assert (
                await http.put("/_sandbox/faults", json={"refuse_status": 503, "refuse_count": 1})
            ).status_code == 200
            assert standin.faults.refuse_status == 503
            assert (await http.put("/_sandbox/faults", json={"nope": 1})).status_code == 422
            await http.put("/_sandbox/faults", json={})
            assert (
                await http.put(
                    "/_sandbox/agents/agent_sandbox/faults", json={"reply_delay_seconds": 2}
                )
            ).status_code == 200
            assert standin.agent_faults["agent_sandbox"].reply_delay_seconds == 2
            assert (
                await http.post("/_sandbox/connections/faults", json={"no_answer": True})
            ).status_code == 200

            script = await http.put(
                "/_sandbox/calls/scripts/+1c", json={"outcomes": ["no-answer", "completed"]}
            )
            assert script.status_code == 200
            assert standin.call_scripts["+1c"].outcomes == ("no-answer", "completed")
            bad_script = await http.put("/_sandbox/calls/scripts/+1c", json={"outcomes": ["x"]})
            assert bad_script.status_code == 422
            timing = await http.put("/_sandbox/timing", json={"processing_seconds": 0})
            assert timing.json()["processing_seconds"] == 0

            completed = await http.post(
                "/_sandbox/calls/completed",
                json={"external_number": "+1d", "summary": "Quote sent", "user_turns": ["Hi"]},
            )
            assert completed.status_code == 200
            assert completed.json()["analysis"]["transcript_summary"] == "Quote sent"
            failed = await http.post(
                "/_sandbox/calls/failed", json={"external_number": "+1e", "outcome": "failed"}
            )
            assert failed.json()["status"] == "failed"
            assert [b["type"] for b in receiver.bodies()][-2:] == [
                "post_call_transcription",
                "call_initiation_failure",
            ]

            before = standin.now_unix
            clock = (await http.post("/_sandbox/clock/advance", json={"seconds": 90})).json()
            assert clock["now_unix"] == before + 90
            assert (await http.get("/_sandbox/clock")).json() == clock
            assert (
                await http.post("/_sandbox/clock/advance", json={"seconds": -1})
            ).status_code == 422

            hook = await http.put(
                "/_sandbox/webhook",
                json={"url": receiver.url, "secret": "wsec_other_secret_1", "retry_delays": [1]},
            )
            assert hook.json() == {
                "url": receiver.url,
                "secret_set": True,
                "events": ["call_initiation_failure", "transcript"],
                "retry_delays": [1.0],
            }
            assert "wsec_other_secret_1" not in hook.text
            deliveries = (await http.get("/_sandbox/webhooks/deliveries")).json()
            # The session above finished processing during the advance: its webhook is last.
            assert [(d["event_type"], d["conversation_id"]) for d in deliveries][-1] == (
                "post_call_transcription",
                conversation_id,
            )
            assert {d["status_code"] for d in deliveries} == {200}
            assert (await http.delete("/_sandbox/agents/agent_scripted")).status_code == 200
            assert (await http.get("/_sandbox/sessions/conv_nope")).status_code == 404
