"""Status callbacks and the 24-hour window, on trio's clock (autojump: milliseconds)."""

from __future__ import annotations

import httpx
import trio
from twilio.request_validator import RequestValidator

from sandbox.twilio import (
    WINDOW_CLOSED_MESSAGE,
    WINDOW_SECONDS,
    TwilioStandIn,
    serve_twilio,
)
from tests.sandbox.test_twilio_support import Answer, Caught, Receiver, serve_receiver

USER = "+15551234567"


def api(twilio: TwilioStandIn) -> httpx.AsyncClient:
    assert twilio.base_url is not None
    return httpx.AsyncClient(
        base_url=f"{twilio.base_url}/2010-04-01/Accounts/{twilio.account_sid}",
        auth=(twilio.account_sid, twilio.auth_token),
    )


async def send(
    client: httpx.AsyncClient, twilio: TwilioStandIn, receiver: Receiver, **extra: str
) -> dict[str, object]:
    form = {
        "To": f"whatsapp:{USER}",
        "From": twilio.whatsapp_from,
        "Body": "Following up on our call",
        "StatusCallback": receiver.url("/status"),
        **extra,
    }
    response = await client.post("/Messages.json", data=form)
    assert response.status_code == 201, response.text
    result: dict[str, object] = response.json()
    return result


def assert_signed(twilio: TwilioStandIn, caught: Caught) -> None:
    validator = RequestValidator(twilio.auth_token)
    assert validator.validate(caught.url, caught.params, caught.headers["x-twilio-signature"])


async def test_sent_delivered_read_callbacks_are_signed_whatsapp_forms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_receiver() as receiver, serve_twilio() as twilio, api(twilio) as client:
            twilio.webhook_url = receiver.url("/inbound")
            await twilio.user_says(USER, "hi")  # opens the window
            await receiver.next()
            message = await send(client, twilio, receiver)
            callbacks = [await receiver.next() for _ in range(3)]
    assert [c.params["MessageStatus"] for c in callbacks] == ["sent", "delivered", "read"]
    for caught in callbacks:
        assert_signed(twilio, caught)
        params = caught.params
        assert params["MessageSid"] == params["SmsSid"] == message["sid"]
        assert params["SmsStatus"] == params["MessageStatus"]
        assert params["To"] == f"whatsapp:{USER}"
        assert params["From"] == twilio.whatsapp_from
        assert params["ChannelToAddress"] == USER
        assert params["ChannelPrefix"] == "whatsapp"
        assert params["AccountSid"] == twilio.account_sid
        assert params["ApiVersion"] == "2010-04-01"
        assert params["ChannelInstallSid"].startswith("XE")
        assert "ErrorCode" not in params
        assert caught.headers["i-twilio-idempotency-token"]
        assert caught.headers["user-agent"] == "TwilioProxy/1.1"
    assert callbacks[0].params["StructuredMessage"] == "false"
    assert [c.params.get("EventType") for c in callbacks] == [None, "DELIVERED", "READ"]
    [record] = twilio.received(USER)
    assert record.status == "read"
    assert record.date_sent is not None


async def test_free_text_outside_the_window_is_accepted_then_fails_with_63016(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_receiver() as receiver, serve_twilio() as twilio, api(twilio) as client:
            message = await send(client, twilio, receiver)
            failure = await receiver.next()
            await trio.sleep(10)  # nothing follows a failure
            fetched = (await client.get(f"/Messages/{message['sid']}.json")).json()
    assert message["status"] == "queued"
    assert failure.params["MessageStatus"] == "failed"
    assert failure.params["ErrorCode"] == "63016"
    assert failure.params["ErrorMessage"] == WINDOW_CLOSED_MESSAGE
    assert_signed(twilio, failure)
    assert len(receiver.caught) == 1
    assert (fetched["status"], fetched["error_code"]) == ("failed", 63016)
    assert [(r.sid, r.status) for r in twilio.received(USER)] == [(message["sid"], "failed")]


async def test_window_closes_24_hours_after_the_last_inbound_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_receiver() as receiver, serve_twilio() as twilio, api(twilio) as client:
            twilio.webhook_url = receiver.url("/inbound")
            twilio.read_receipts = False
            await twilio.user_says(USER, "hi")
            await receiver.next()
            assert twilio.window_open(USER)
            twilio.advance(WINDOW_SECONDS - 60)
            inside = await send(client, twilio, receiver)
            inside_statuses = [(await receiver.next()).params["MessageStatus"] for _ in range(2)]
            twilio.advance(120)
            assert not twilio.window_open(USER)
            outside = await send(client, twilio, receiver)
            outside_status = (await receiver.next()).params
            # A template may go out whatever the window says.
            template = twilio.register_template("About our call: {{1}}")
            templated = await send(
                client,
                twilio,
                receiver,
                ContentSid=template,
                ContentVariables='{"1": "see you"}',
                Body="",
            )
            templated_statuses = [(await receiver.next()).params["MessageStatus"] for _ in range(2)]
    assert inside["status"] == "queued"
    assert inside_statuses == ["sent", "delivered"]
    assert (outside_status["MessageStatus"], outside_status["ErrorCode"]) == ("failed", "63016")
    assert outside["sid"] == outside_status["MessageSid"]
    assert templated["body"] == "About our call: see you"
    assert templated_statuses == ["sent", "delivered"]


async def test_window_failure_status_can_be_undelivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with (
            serve_receiver() as receiver,
            serve_twilio(TwilioStandIn(window_failure_status="undelivered")) as twilio,
            api(twilio) as client,
        ):
            await send(client, twilio, receiver)
            failure = await receiver.next()
    assert (failure.params["MessageStatus"], failure.params["ErrorCode"]) == (
        "undelivered",
        "63016",
    )


async def test_statuses_advance_when_callbacks_are_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_receiver() as receiver, serve_twilio() as twilio, api(twilio) as client:
            twilio.webhook_url = receiver.url("/inbound")
            await twilio.user_says(USER, "hi")
            await receiver.next()
            twilio.status_callbacks = False
            message = await send(client, twilio, receiver)
            await trio.sleep(10)
            fetched = (await client.get(f"/Messages/{message['sid']}.json")).json()
    assert fetched["status"] == "read"
    assert [c.path for c in receiver.caught] == ["/inbound"]


async def test_messaging_service_messages_start_accepted_then_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = "MG" + "a" * 32
    with trio.fail_after(30):
        async with serve_receiver() as receiver, serve_twilio() as twilio, api(twilio) as client:
            template = twilio.register_template("Hello")
            form = {
                "To": f"whatsapp:{USER}",
                "MessagingServiceSid": service,
                "ContentSid": template,
                "StatusCallback": receiver.url("/status"),
            }
            created = (await client.post("/Messages.json", data=form)).json()
            statuses = [(await receiver.next()).params for _ in range(4)]
    assert created["status"] == "accepted"
    assert created["messaging_service_sid"] == service
    assert [p["MessageStatus"] for p in statuses] == ["queued", "sent", "delivered", "read"]
    assert {p["MessagingServiceSid"] for p in statuses} == {service}


async def test_failing_callback_endpoint_is_recorded_and_does_not_stop_the_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_receiver() as receiver, serve_twilio() as twilio, api(twilio) as client:
            twilio.last_inbound[USER] = twilio.clock.now()
            receiver.answer("/status", Answer(status=500, body="oops", content_type="text/plain"))
            message = await send(client, twilio, receiver)
            for _ in range(3):
                await receiver.next()
    assert twilio.messages[str(message["sid"])].status == "read"
    assert [(d.kind, d.status_code, d.debugger_code) for d in twilio.deliveries] == [
        ("status", 500, 11217)
    ] * 3
