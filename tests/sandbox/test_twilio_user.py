"""Simulated WhatsApp users: inbound webhooks, duplicates, media, bad signatures, replies."""

from __future__ import annotations

import re

import httpx
import pytest
import trio
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from sandbox.twilio import Media, NotServing, NoWebhookUrl, TwilioStandIn, serve_twilio
from tests.sandbox.test_twilio_support import Answer, serve_receiver

USER = "+15551234567"
WHATSAPP_FIELDS = {
    "MessageSid",
    "SmsMessageSid",
    "SmsSid",
    "AccountSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "ProfileName",
    "WaId",
    "SmsStatus",
    "NumSegments",
    "ReferralNumMedia",
    "ApiVersion",
    "MessageType",
}


async def test_inbound_message_has_every_field_and_a_valid_signature() -> None:
    with trio.fail_after(10):
        async with serve_receiver() as receiver, serve_twilio() as twilio:
            twilio.webhook_url = receiver.url("/twilio/whatsapp?tenant=demo")
            sid = await twilio.user_says(USER, "Hello there", profile_name="Ada")
            caught = await receiver.next()
    params = caught.params
    assert set(params) == WHATSAPP_FIELDS
    assert re.fullmatch(r"SM[0-9a-f]{32}", sid)
    assert params["MessageSid"] == params["SmsSid"] == params["SmsMessageSid"] == sid
    assert params["AccountSid"] == twilio.account_sid
    assert (params["From"], params["To"]) == (f"whatsapp:{USER}", twilio.whatsapp_from)
    assert (params["Body"], params["ProfileName"], params["WaId"]) == (
        "Hello there",
        "Ada",
        "15551234567",
    )
    assert (params["NumMedia"], params["MessageType"], params["SmsStatus"]) == (
        "0",
        "text",
        "received",
    )
    headers = caught.headers
    assert headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert headers["user-agent"] == "TwilioProxy/1.1"
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["i-twilio-idempotency-token"])
    assert caught.url == twilio.webhook_url
    validator = RequestValidator(twilio.auth_token)
    assert validator.validate(twilio.webhook_url, params, headers["x-twilio-signature"])
    [inbound] = twilio.sent_by(USER)
    assert (inbound.sid, inbound.direction, inbound.status) == (sid, "inbound", "received")
    assert twilio.window_open(USER)


async def test_duplicate_delivery_repeats_message_sid_and_token() -> None:
    with trio.fail_after(10):
        async with serve_receiver() as receiver, serve_twilio() as twilio:
            twilio.webhook_url = receiver.url("/inbound")
            sid = await twilio.user_says(USER, "once", duplicate=True)
            first, second = await receiver.next(), await receiver.next()
    assert first.params == second.params
    assert first.params["MessageSid"] == sid
    assert (
        first.headers["i-twilio-idempotency-token"] == second.headers["i-twilio-idempotency-token"]
    )
    assert first.headers["x-twilio-signature"] == second.headers["x-twilio-signature"]
    assert len(twilio.sent_by(USER)) == 1


async def test_bad_signature_fails_validation() -> None:
    with trio.fail_after(10):
        async with serve_receiver() as receiver, serve_twilio() as twilio:
            twilio.webhook_url = receiver.url("/inbound")
            await twilio.user_says(USER, "forged?", bad_signature=True)
            caught = await receiver.next()
    validator = RequestValidator(twilio.auth_token)
    assert not validator.validate(caught.url, caught.params, caught.headers["x-twilio-signature"])


async def test_media_message_carries_urls_served_behind_basic_auth() -> None:
    photo = Media("image/jpeg", b"\xff\xd8jpeg bytes")
    with trio.fail_after(10):
        async with (
            serve_receiver() as receiver,
            serve_twilio() as twilio,
            httpx.AsyncClient() as http,
        ):
            twilio.webhook_url = receiver.url("/inbound")
            sid = await twilio.user_says(USER, media=[photo])
            params = (await receiver.next()).params
            url, base_url = params["MediaUrl0"], str(twilio.base_url)
            anonymous = await http.get(url)
            fetched = await http.get(url, auth=(twilio.account_sid, twilio.auth_token))
    assert re.fullmatch(r"MM[0-9a-f]{32}", sid)
    assert (params["NumMedia"], params["MediaContentType0"], params["MessageType"]) == (
        "1",
        "image/jpeg",
        "image",
    )
    assert params["Body"] == ""
    assert re.fullmatch(
        rf"{re.escape(base_url)}/2010-04-01/Accounts/{twilio.account_sid}"
        rf"/Messages/{sid}/Media/ME[0-9a-f]{{32}}",
        url,
    )
    assert anonymous.status_code == 401
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/jpeg"
    assert fetched.content == photo.content


async def test_twiml_replies_are_recorded_as_outbound_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reply = MessagingResponse()
    reply.message("Thanks, noted.")
    reply.message("Anything else?")
    with trio.fail_after(10):
        async with serve_receiver() as receiver, serve_twilio() as twilio:
            receiver.answer("/inbound", Answer(body=str(reply)))
            twilio.webhook_url = receiver.url("/inbound")
            await twilio.user_says(USER, "my order is late")
            await trio.sleep(5)
    got = twilio.received(USER)
    assert [(r.body, r.direction, r.status) for r in got] == [
        ("Thanks, noted.", "outbound-reply", "read"),
        ("Anything else?", "outbound-reply", "read"),
    ]
    assert [d.debugger_code for d in twilio.deliveries] == [None]


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (Answer(status=500, body="boom", content_type="text/plain"), 11217),
        (Answer(status=403, body="", content_type="text/plain"), 11217),
        (Answer(body="<Response/>", content_type=None), 12300),
        (Answer(body="this is not xml", content_type="text/xml"), 12100),
        (Answer(status=204, body="", content_type=None), None),
        (Answer(delay=20.0), 11205),
    ],
)
async def test_webhook_answers_are_judged_like_twilios_debugger(
    autojump_clock: trio.testing.MockClock, answer: Answer, code: int | None
) -> None:
    with trio.fail_after(60):
        async with serve_receiver() as receiver, serve_twilio() as twilio:
            receiver.answer("/inbound", answer)
            twilio.webhook_url = receiver.url("/inbound")
            await twilio.user_says(USER, "hi")
    [delivery] = twilio.deliveries
    assert delivery.kind == "inbound"
    assert delivery.debugger_code == code
    assert twilio.received(USER) == []


async def test_unreachable_webhook_is_retried_once_then_recorded() -> None:
    with trio.fail_after(10):
        async with serve_receiver() as receiver:
            dead_url = receiver.url("/inbound")
        async with serve_twilio() as twilio:
            twilio.webhook_url = dead_url
            await twilio.user_says(USER, "anyone?")
    [delivery] = twilio.deliveries
    assert (delivery.status_code, delivery.debugger_code) == (None, 11205)


async def test_user_needs_a_served_stand_in_and_a_webhook_url() -> None:
    with pytest.raises(NotServing):
        await TwilioStandIn(webhook_url="http://127.0.0.1:9/x").user_says(USER, "hi")
    with trio.fail_after(10):
        async with serve_twilio() as twilio:
            with pytest.raises(NoWebhookUrl):
                await twilio.user_says(USER, "hi")


async def test_auth_token_stays_out_of_repr() -> None:
    standin = TwilioStandIn()
    assert standin.auth_token not in repr(standin)


async def test_control_api_drives_a_whole_exchange(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reply = MessagingResponse()
    reply.message("Hello from the app")
    with trio.fail_after(30):
        async with (
            serve_receiver() as receiver,
            serve_twilio() as twilio,
            httpx.AsyncClient(base_url=f"{twilio.base_url}/_sandbox") as control,
        ):
            receiver.answer("/inbound", Answer(body=str(reply)))
            no_hook = await control.post(f"/users/{USER}/messages", json={"body": "hi"})
            hook = await control.put("/webhook", json={"url": receiver.url("/inbound")})
            said = await control.post(
                f"/users/whatsapp:{USER}/messages",
                json={
                    "body": "hi",
                    "profile_name": "Ada",
                    "media": [{"content_type": "image/png", "content_base64": "iVBORw=="}],
                },
            )
            caught = await receiver.next()
            await trio.sleep(5)
            received = (await control.get(f"/phones/{USER}/received")).json()
            template = await control.post("/templates", json={"body": "Hi {{1}}"})
            templates = (await control.get("/templates")).json()
            advanced = await control.post("/clock/advance", json={"seconds": 86400})
            callbacks = await control.put("/status-callbacks", json={"enabled": False})
            described = (await control.get("")).json()
            deliveries = (await control.get("/deliveries")).json()
    assert no_hook.status_code == 409
    assert hook.status_code == 200
    assert said.status_code == 201
    assert caught.params["MessageSid"] == said.json()["sid"]
    assert caught.params["ProfileName"] == "Ada"
    assert caught.params["MediaContentType0"] == "image/png"
    [message] = received["messages"]
    assert (message["body"], message["direction"], message["status"]) == (
        "Hello from the app",
        "outbound-reply",
        "read",
    )
    assert template.status_code == 201
    assert templates["templates"] == [{"sid": template.json()["sid"], "body": "Hi {{1}}"}]
    assert advanced.json() == {"offset": 86400.0}
    assert not twilio.window_open(USER)
    assert callbacks.json() == {"enabled": False}
    assert described["account_sid"] == twilio.account_sid
    assert twilio.auth_token not in str(described)
    assert deliveries["deliveries"][0]["kind"] == "inbound"
