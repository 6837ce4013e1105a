"""The WhatsApp sender against the Twilio stand-in, over real sockets on 127.0.0.1.

Every async test runs under ``autojump_clock`` (backoff sleeps and the stand-in's delivery delays
take no real time, and ``trio.current_time`` deltas measure them exactly) inside an
absolute ``trio.fail_after``. Status callbacks land in the receiver from the sandbox tests;
``ApiLog`` sits in front of the stand-in's REST API and records every request that reaches
it, so "one request" and "exactly one message" are counted where Twilio would count them.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qs

import attrs
import pytest
import trio
from trio.testing import MockClock

import clients.twilio.sender
from clients.http1 import Http1Transport
from clients.twilio.content import EmptyMessage, MessageTooLong, split_message
from clients.twilio.resources import SentMessage
from clients.twilio.sender import TwilioConfig, TwilioRejected, TwilioUnavailable, WhatsAppSender
from events.conversation import Template
from events.phones import InvalidPhone
from sandbox.twilio import Fault, TwilioStandIn, serve_twilio
from sandbox.twilio._faults import ASGIApp
from tests.sandbox.test_twilio_support import Receiver, serve_receiver

PHONE = "+15551234567"
OTHER_PHONE = "+15557654321"
DEADLINE = 60  # seconds of trio's (mock) clock for a whole test


# -- the world: stand-in, receiver, client -----------------------------------------------


@attrs.frozen
class ApiRequest:
    method: str
    path: str
    fields: dict[str, list[str]]

    @property
    def is_create(self) -> bool:
        return self.method == "POST" and self.path.endswith("/Messages.json")


@attrs.define
class ApiLog:
    """ASGI layer in front of the stand-in's REST API: records requests, and can make
    Twilio refuse a create or lose its answer after the message was created (what a 500
    from a half-done request or a connection lost on the way back looks like)."""

    requests: list[ApiRequest] = attrs.Factory(list)
    refusals: list[tuple[int, int, str]] = attrs.Factory(list)
    lost_answers: list[Literal["500", "stall"]] = attrs.Factory(list)

    @property
    def creates(self) -> list[ApiRequest]:
        return [request for request in self.requests if request.is_create]

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or not scope["path"].startswith("/2010-04-01/"):
                await app(scope, receive, send)
                return
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            text = body.decode() if scope["method"] == "POST" else scope["query_string"].decode()
            request = ApiRequest(scope["method"], scope["path"], parse_qs(text))
            self.requests.append(request)

            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if replayed:
                    return await receive()  # then whatever comes next (a disconnect)
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            if request.is_create and self.refusals:
                status, code, message_text = self.refusals.pop(0)
                await _send_json(send, status, _twilio_error(status, code, message_text))
                return
            if request.is_create and self.lost_answers:
                how = self.lost_answers.pop(0)

                async def swallow(_: Any) -> None:
                    pass

                await app(scope, replay, swallow)  # Twilio creates the message...
                if how == "stall":
                    await trio.sleep_forever()  # ...and the answer never comes back
                await _send_json(send, 500, _twilio_error(500, 20500, "Internal error"))
                return
            await app(scope, replay, send)

        return wrapped


def _twilio_error(status: int, code: int, message: str) -> dict[str, object]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


async def _send_json(send: Any, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@attrs.define
class World:
    twilio: TwilioStandIn
    receiver: Receiver
    transport: Http1Transport
    api: ApiLog

    def config(self, **overrides: Any) -> TwilioConfig:
        assert self.twilio.base_url is not None
        settings: dict[str, Any] = {
            "account_sid": self.twilio.account_sid,
            "auth_token": self.twilio.auth_token,
            "whatsapp_from": self.twilio.whatsapp_from,
            "api_base_url": self.twilio.base_url,
            "status_callback_url": self.receiver.url("/status"),
        }
        settings.update(overrides)
        return TwilioConfig(**settings)

    def sender(self, **overrides: Any) -> WhatsAppSender:
        return WhatsAppSender(self.transport, self.config(**overrides), random=random.Random(5))

    async def open_window(self, phone: str = PHONE) -> None:
        """The person writes to us: the 24-hour window opens (the webhook was answered
        by the time ``user_says`` returns)."""
        await self.twilio.user_says(phone, "hello")

    async def final_status(self, sid: str) -> dict[str, str]:
        """The status callback that ends a message's life (read, failed or undelivered)."""
        while True:
            for item in self.receiver.caught:
                params = item.params
                if (
                    item.path == "/status"
                    and params.get("MessageSid") == sid
                    and params["MessageStatus"] in ("read", "failed", "undelivered")
                ):
                    return params
            await self.receiver.next()  # something new arrived: look again


@asynccontextmanager
async def world() -> AsyncIterator[World]:
    standin = TwilioStandIn()
    api = ApiLog()
    standin.app = api.wrap(standin.app)
    async with (
        serve_receiver() as receiver,
        serve_twilio(standin) as twilio,
        Http1Transport() as transport,  # the transport the service gives its sender
    ):
        twilio.webhook_url = receiver.url("/inbound")
        yield World(twilio, receiver, transport, api)


# -- sending -----------------------------------------------------------------------------


async def test_send_text_returns_the_created_message(autojump_clock: MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            await w.open_window()
            sender = w.sender()
            sent = await sender.send_text(PHONE, "Thanks for the call! 👍")
            final = await w.final_status(sent.sid)

    assert isinstance(sent, SentMessage)
    assert sent.sid.startswith("SM")
    assert len(sent.sid) == 34
    assert (sent.status, sent.to, sent.body) == ("queued", PHONE, "Thanks for the call! 👍")
    assert sent.date_created is not None
    assert sent.date_created.tzinfo is not None
    assert sent.error_code is None
    [create] = w.api.creates
    assert create.fields == {
        "To": [f"whatsapp:{PHONE}"],
        "From": ["whatsapp:+14155238886"],
        "Body": ["Thanks for the call! 👍"],
        "StatusCallback": [w.receiver.url("/status")],
    }
    assert final["MessageStatus"] == "read"
    [record] = w.twilio.received(PHONE)
    assert record.sid == sent.sid
    assert sender.statistics().requests == 1
    assert sender.statistics().sent == 1


async def test_send_template_sends_content_sid_and_variables_without_body(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            content_sid = w.twilio.register_template("Hi {{1}}, about our call: {{2}}")
            sender = w.sender()
            sent = await sender.send_template(
                PHONE, content_sid, {"1": "Ada", "2": "you asked for a callback."}
            )
            final = await w.final_status(sent.sid)

    [create] = w.api.creates
    assert create.fields["ContentSid"] == [content_sid]
    assert json.loads(create.fields["ContentVariables"][0]) == {
        "1": "Ada",
        "2": "you asked for a callback.",
    }
    assert "Body" not in create.fields
    assert create.fields["StatusCallback"] == [w.receiver.url("/status")]
    assert sent.body == "Hi Ada, about our call: you asked for a callback."
    # outside the 24-hour window (nobody wrote to us), and still delivered: it is a template
    assert final["MessageStatus"] == "read"


async def test_outside_the_window_text_fails_with_63016_and_the_template_does_not(
    autojump_clock: MockClock,
) -> None:
    """Why the first message after a call is a template outside the 24-hour window."""
    with trio.fail_after(DEADLINE):
        async with world() as w:
            template = Template(w.twilio.register_template("Hi {{1}}"), {"1": "Ada"})
            sender = w.sender()
            text = "Hi Ada, following up on our call."

            blind = await sender.send_text(PHONE, text)
            blind_final = await w.final_status(blind.sid)

            assert not w.twilio.window_open(PHONE)
            first = await sender.send_template(PHONE, template.content_sid, template.variables)
            first_final = await w.final_status(first.sid)

            await w.open_window()
            assert w.twilio.window_open(PHONE)
            reply = await sender.send_text(PHONE, text)
            reply_final = await w.final_status(reply.sid)
            fetched = await sender.fetch(blind.sid)

    assert (blind_final["MessageStatus"], blind_final["ErrorCode"]) == ("failed", "63016")
    assert first_final["MessageStatus"] == "read"
    assert reply_final["MessageStatus"] == "read"
    assert (fetched.status, fetched.error_code) == ("failed", 63016)


async def test_a_5000_character_answer_goes_out_as_ordered_parts(autojump_clock: MockClock) -> None:
    sentence = "Your order ships on Monday and arrives within three working days. "
    answer = (sentence * 80)[:5000]
    parts = split_message(answer)
    assert len(parts) == 4
    with trio.fail_after(DEADLINE):
        async with world() as w:
            await w.open_window()
            sender = w.sender()
            sent = [await sender.send_text(PHONE, part) for part in parts]
            finals = [await w.final_status(message.sid) for message in sent]

    received = w.twilio.received(PHONE)
    assert [record.body for record in received] == parts
    assert all(0 < len(record.body) <= 1600 for record in received)
    assert all(part.endswith(".") for part in parts[:-1])
    assert {final["MessageStatus"] for final in finals} == {"read"}


# -- nothing empty, nothing invalid ------------------------------------------------------


@pytest.mark.parametrize("body", ["", " ", "\n\t \r\n", "\u00a0"])
async def test_empty_body_is_refused_before_any_request(
    body: str, autojump_clock: MockClock
) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            sender = w.sender()
            with pytest.raises(EmptyMessage):
                await sender.send_text(PHONE, body)
            content_sid = w.twilio.register_template("Hi {{1}}")
            with pytest.raises(EmptyMessage):
                await sender.send_template(PHONE, content_sid, {"1": body})

    assert w.api.requests == []
    assert sender.statistics().requests == 0
    assert w.twilio.received(PHONE) == []


async def test_bad_phone_and_long_body_are_refused_before_any_request(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            sender = w.sender()
            with pytest.raises(InvalidPhone, match="no country code"):
                await sender.send_text("0612345678", "hello")
            with pytest.raises(MessageTooLong):
                await sender.send_text(PHONE, "x" * 1601)
            with pytest.raises(ValueError, match="Content SID"):
                await sender.send_template(PHONE, "HX123", {})
            with pytest.raises(ValueError, match="message SID"):
                await sender.fetch("SM/../../Accounts")
    assert w.api.requests == []


# -- retries -----------------------------------------------------------------------------


async def test_429_then_success_is_exactly_one_message(autojump_clock: MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.twilio.inject(Fault.rate_limited())
            sender = w.sender()
            start = trio.current_time()
            sent = await sender.send_text(PHONE, "hello")
            elapsed = trio.current_time() - start

    assert [record.sid for record in w.twilio.received(PHONE)] == [sent.sid]
    assert len(w.api.creates) == 2
    assert len(w.api.requests) == 2  # a 429 did nothing: no look-up before the retry
    assert 0 <= elapsed <= sender.config.backoff_initial
    stats = sender.statistics()
    assert (stats.retries, stats.last_error_code, stats.reconciled) == (1, 20429, 0)


async def test_retry_after_is_honoured(autojump_clock: MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.twilio.inject(Fault.rate_limited(retry_after=7), times=2)
            sender = w.sender()
            start = trio.current_time()
            await sender.send_text(PHONE, "hello")
            elapsed = trio.current_time() - start

    # two waits of Retry-After (7 s) plus jitter of at most backoff_initial each
    assert 14 <= elapsed <= 14 + 2 * sender.config.backoff_initial
    assert len(w.twilio.received(PHONE)) == 1


async def test_retry_after_beyond_the_budget_gives_up_at_once(autojump_clock: MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.twilio.inject(Fault.rate_limited(retry_after=120))
            sender = w.sender(backoff_max=30)
            start = trio.current_time()
            with pytest.raises(TwilioUnavailable) as caught:
                await sender.send_text(PHONE, "hello")
            elapsed = trio.current_time() - start

    error = caught.value
    assert (error.status, error.code, error.retry_after) == (429, 20429, 120)
    assert error.retryable
    assert not error.maybe_sent
    assert "Retry-After 120s" in str(error)
    assert elapsed == 0
    assert len(w.api.requests) == 1
    assert w.twilio.received(PHONE) == []


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retried(
    status: Literal[500, 503], autojump_clock: MockClock
) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.twilio.inject(Fault.server_error(status))
            sender = w.sender()
            sent = await sender.send_text(PHONE, "hello")

    assert [record.sid for record in w.twilio.received(PHONE)] == [sent.sid]
    # a 5xx may have been half done: the retry first looks the message up (two listings)
    methods = [request.method for request in w.api.requests]
    assert methods == ["POST", "GET", "GET", "POST"]
    assert sender.statistics().retries == 1


async def test_dropped_connection_is_retried(autojump_clock: MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.twilio.inject(Fault.dropped())
            sender = w.sender()
            sent = await sender.send_text(PHONE, "hello")

    assert [record.sid for record in w.twilio.received(PHONE)] == [sent.sid]
    assert len(w.api.creates) == 2
    assert sender.statistics().retries == 1


@pytest.mark.parametrize("how", ["500", "stall"])
async def test_a_lost_answer_is_found_not_sent_again(
    how: Literal["500", "stall"], autojump_clock: MockClock
) -> None:
    """Twilio created the message but the answer was lost (a 500, or no answer before
    the timeout): the retry finds it instead of sending a second WhatsApp message."""
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.api.lost_answers.append(how)
            sender = w.sender(request_timeout=5)
            start = trio.current_time()
            sent = await sender.send_text(PHONE, "Your code is 1234.")
            elapsed = trio.current_time() - start

    [record] = w.twilio.received(PHONE)
    assert sent.sid == record.sid
    assert len(w.api.creates) == 1
    assert sender.statistics().reconciled == 1
    if how == "stall":
        assert elapsed >= 5


async def test_persistent_rate_limit_ends_unavailable_after_the_budget(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.twilio.inject(Fault.rate_limited(), times=None)
            sender = w.sender(max_attempts=3)
            with pytest.raises(TwilioUnavailable) as caught:
                await sender.send_text(PHONE, "hello")

    error = caught.value
    assert (error.status, error.code, error.attempts, error.maybe_sent) == (429, 20429, 3, False)
    assert len(w.api.requests) == 3
    assert w.twilio.received(PHONE) == []
    stats = sender.statistics()
    assert (stats.retries, stats.unavailable, stats.sent) == (2, 1, 0)


async def test_persistent_server_error_says_the_message_may_have_been_sent(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.twilio.inject(Fault.server_error(503), times=None, phone=PHONE)
            sender = w.sender(max_attempts=2)
            with pytest.raises(TwilioUnavailable) as caught:
                await sender.send_text(PHONE, "hello")

    assert (caught.value.status, caught.value.code, caught.value.maybe_sent) == (503, 20503, True)
    assert w.twilio.received(PHONE) == []


async def test_nobody_listening_is_unavailable_and_not_maybe_sent(
    autojump_clock: MockClock,
) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now: connections are refused
    with trio.fail_after(DEADLINE):
        async with world() as w:
            sender = w.sender(api_base_url=f"http://127.0.0.1:{port}", max_attempts=3)
            with pytest.raises(TwilioUnavailable, match="cannot connect") as caught:
                await sender.send_text(PHONE, "hello")

    assert (caught.value.attempts, caught.value.maybe_sent) == (3, False)
    assert sender.statistics().requests == 3


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (21211, "The 'To' number +15551234567 is not a valid phone number."),
        (21617, "The concatenated message body exceeds the 1600 character limit."),
    ],
)
async def test_a_400_is_rejected_with_its_code_and_not_retried(
    code: int, message: str, autojump_clock: MockClock
) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.api.refusals.append((400, code, message))
            sender = w.sender()
            with pytest.raises(TwilioRejected) as caught:
                await sender.send_text(PHONE, "hello")

    error = caught.value
    assert (error.status, error.code, error.retryable) == (400, code, False)
    assert message in str(error)
    assert error.more_info == f"https://www.twilio.com/docs/errors/{code}"
    assert len(w.api.requests) == 1
    stats = sender.statistics()
    assert (stats.rejected, stats.retries, stats.last_error_code) == (1, 0, code)


async def test_the_stand_ins_own_refusals_are_rejected_and_not_retried(
    autojump_clock: MockClock,
) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            with pytest.raises(TwilioRejected) as unknown_template:
                await w.sender().send_template(PHONE, "HX" + "0" * 32, {"1": "Ada"})
            with pytest.raises(TwilioRejected) as not_our_sender:
                await w.sender(whatsapp_from="+15550001111").send_text(PHONE, "hello")
            with pytest.raises(TwilioRejected) as missing:
                await w.sender().fetch("SM" + "0" * 32)

    assert unknown_template.value.code == 21655
    assert not_our_sender.value.code == 63007
    assert (missing.value.status, missing.value.code) == (404, 20404)
    assert len(w.api.requests) == 3


async def test_401_is_rejected_and_the_token_appears_nowhere(
    caplog: pytest.LogCaptureFixture, autojump_clock: MockClock
) -> None:
    token = "s3cr3t-token-that-must-not-leak"
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(DEADLINE):
        async with world() as w:
            w.twilio.inject(Fault.rate_limited())  # a retry, so something is logged
            sender = w.sender(auth_token=token)
            with pytest.raises(TwilioRejected) as caught:
                await sender.send_text(PHONE, "hello")

    error = caught.value
    assert (error.status, error.code) == (401, 20003)
    assert "Authenticate" in str(error)
    assert len(w.api.requests) == 2  # the 429, then one 401: not retried
    seen = [str(error), repr(error), repr(error.args), repr(sender), repr(sender.config)]
    seen += [caplog.text, repr(sender.statistics())]
    assert all(token not in text for text in seen)
    assert "retrying" in caplog.text


# -- fetch and find ----------------------------------------------------------------------


async def test_fetch_follows_the_status(autojump_clock: MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            await w.open_window()
            sender = w.sender()
            sent = await sender.send_text(PHONE, "hello")
            await w.final_status(sent.sid)
            fetched = await sender.fetch(sent.sid)

    assert (fetched.sid, fetched.status, fetched.body) == (sent.sid, "read", "hello")
    assert fetched.date_sent is not None


async def test_find_sent_finds_a_message_after_a_crash(autojump_clock: MockClock) -> None:
    """Outbox recovery: the intent was recorded, the message sent, then the process died
    before recording the outcome. A new process looks it up instead of sending again."""
    body = "Your appointment is on Tuesday at 3pm."
    with trio.fail_after(DEADLINE):
        async with world() as w:
            await w.open_window()
            intent_at = datetime.now(UTC)
            before_crash = w.sender()
            sent = await before_crash.send_text(PHONE, body)
            await before_crash.send_text(OTHER_PHONE, body)
            # the crash: the answer is dropped with the process; a new one starts
            async with Http1Transport() as transport:
                after = WhatsAppSender(transport, w.config())
                since = intent_at - timedelta(seconds=30)
                still_queued = await after.find_sent(PHONE, since, body=body)
                await w.final_status(sent.sid)
                found = await after.find_sent(PHONE, since, body=f"  {body}\n")
                other_body = await after.find_sent(PHONE, since, body="Something else.")
                any_body = await after.find_sent(PHONE, since)
                later_since = intent_at + timedelta(hours=1)
                later = await after.find_sent(PHONE, later_since, body=body)

    assert [m.sid for m in still_queued] == [sent.sid]  # no date_sent yet, still found
    assert [m.sid for m in found] == [sent.sid]
    assert (found[0].status, found[0].body) == ("read", body)
    assert other_body == []
    assert [m.sid for m in any_body] == [sent.sid]
    assert later == []
    listed = [r for r in w.api.requests if r.method == "GET"]
    assert all(r.fields["To"] == [f"whatsapp:{PHONE}"] for r in listed)
    dated = [r for r in listed if "DateSent>" in r.fields]
    assert dated
    # Each search filters on its own ``since``'s day (an hour later may be tomorrow).
    days = [r.fields["DateSent>"] for r in dated]
    searched = ([since.date().isoformat()], [later_since.date().isoformat()])
    assert searched[0] in days
    assert all(day in searched for day in days)


async def test_find_sent_pages_through_next_page_uri(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    monkeypatch.setattr(clients.twilio.sender, "PAGE_SIZE", 2)
    with trio.fail_after(DEADLINE):
        async with world() as w:
            await w.open_window()
            since = datetime.now(UTC) - timedelta(seconds=30)
            sender = w.sender()
            sent = [await sender.send_text(PHONE, f"Part {n}.") for n in range(5)]
            for message in sent:
                await w.final_status(message.sid)
            pages_before = len(w.api.requests)
            found = await sender.find_sent(PHONE, since)
            template = await sender.find_sent(PHONE, since, content_sid="HX" + "a" * 32)

    assert {m.sid for m in found} == {m.sid for m in sent}
    assert len(found) == 5
    dated = [r for r in w.api.requests[pages_before:] if "DateSent>" in r.fields]
    assert [r.fields.get("Page") for r in dated[:3]] == [None, ["1"], ["2"]]
    # Twilio's listing has no Content SID: with no body, any message of ours matches
    assert len(template) == 5


async def test_find_sent_retries_a_flaky_listing(autojump_clock: MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            sender = w.sender()
            sent = await sender.send_text(PHONE, "hello")
            w.twilio.inject(Fault.server_error(503), phone=PHONE)
            found = await sender.find_sent(PHONE, datetime.now(UTC) - timedelta(minutes=1))
    assert [m.sid for m in found] == [sent.sid]
    assert sender.statistics().retries == 1


async def test_find_sent_refuses_a_naive_since(autojump_clock: MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with world() as w:
            with pytest.raises(ValueError, match="timezone-aware"):
                await w.sender().find_sent(PHONE, datetime(2026, 1, 1))
    assert w.api.requests == []


# -- configuration -----------------------------------------------------------------------


def test_config_normalises_the_sender_and_hides_the_token() -> None:
    config = TwilioConfig(
        account_sid="AC" + "1" * 32,
        auth_token="tok-123-secret",
        whatsapp_from="+1 415 523 8886",
        api_base_url="https://api.twilio.com/",
    )
    assert config.whatsapp_from == "whatsapp:+14155238886"
    assert config.api_base_url == "https://api.twilio.com"
    assert config.messages_url == (
        f"https://api.twilio.com/2010-04-01/Accounts/{'AC' + '1' * 32}/Messages.json"
    )
    assert "tok-123-secret" not in repr(config)
    assert "tok-123-secret" not in str(config)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"auth_token": " "}, "auth_token must not be empty"),
        ({"account_sid": "AC/../x"}, "letters and digits"),
        ({"whatsapp_from": "sandbox"}, "not a phone number"),
        ({"status_callback_url": "https://my_host/status"}, "underscore"),
        ({"status_callback_url": "ftp://host/status"}, "http"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff_initial": 0}, "backoff_initial. must be > 0"),
    ],
)
def test_config_refuses_what_cannot_work(overrides: dict[str, Any], match: str) -> None:
    settings: dict[str, Any] = {
        "account_sid": "AC" + "1" * 32,
        "auth_token": "token",
        "whatsapp_from": "+14155238886",
    }
    settings.update(overrides)
    with pytest.raises(ValueError, match=match):
        TwilioConfig(**settings)
