"""The official twilio-python client against the stand-in: it must not notice the swap.

twilio-python is synchronous (requests), so each call runs in a worker thread while the
stand-in serves on the test's trio loop. These tests use the real clock (an autojump clock
would leap while the loop waits for the thread) and never wait for time to pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
import trio
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from sandbox.twilio import TwilioStandIn, serve_twilio

USER = "+15551234567"
T = TypeVar("T")


def client_for(twilio: TwilioStandIn, *, token: str | None = None) -> Client:
    client = Client(twilio.account_sid, token or twilio.auth_token)
    client.api.base_url = twilio.base_url
    return client


async def in_thread(client: Client, work: Callable[[], T]) -> T:
    """Run ``work`` in a thread, then close the client's keep-alive connection.

    An open connection would hold the stand-in's graceful shutdown for its full timeout.
    """

    def run() -> T:
        try:
            return work()
        finally:
            client.http_client.session.close()

    return await trio.to_thread.run_sync(run)


async def test_official_client_creates_fetches_and_lists() -> None:
    with trio.fail_after(20):
        async with serve_twilio() as twilio:
            twilio.last_inbound[USER] = twilio.clock.now()
            client = client_for(twilio)
            template = twilio.register_template("Hi {{1}}")

            def exercise() -> tuple[object, ...]:
                created = client.messages.create(
                    to=f"whatsapp:{USER}",
                    from_=twilio.whatsapp_from,
                    body="Following up on our call",
                    status_callback="https://example.com/status",
                )
                templated = client.messages.create(
                    to=f"whatsapp:{USER}",
                    from_=twilio.whatsapp_from,
                    content_sid=template,
                    content_variables='{"1": "Ada"}',
                )
                fetched = client.messages(created.sid).fetch()
                listed = client.messages.list(to=f"whatsapp:{USER}", page_size=1)
                recent = client.messages.list(
                    date_sent_after=datetime.now(UTC) - timedelta(days=1), limit=5
                )
                return created, templated, fetched, listed, recent

            created, templated, fetched, listed, recent = await in_thread(client, exercise)
    assert re.fullmatch(r"SM[0-9a-f]{32}", created.sid)  # type: ignore[attr-defined]
    assert created.status == "queued"  # type: ignore[attr-defined]
    assert created.to == f"whatsapp:{USER}"  # type: ignore[attr-defined]
    assert created.from_ == twilio.whatsapp_from  # type: ignore[attr-defined]
    assert isinstance(created.date_created, datetime)  # type: ignore[attr-defined]
    assert created.date_created.tzinfo is not None  # type: ignore[attr-defined]
    assert created.error_code is None  # type: ignore[attr-defined]
    assert created.num_segments == "1"  # type: ignore[attr-defined]
    assert templated.body == "Hi Ada"  # type: ignore[attr-defined]
    assert fetched.sid == created.sid  # type: ignore[attr-defined]
    assert fetched.body == "Following up on our call"  # type: ignore[attr-defined]
    # list() follows next_page_uri across one-message pages, newest first.
    assert [m.sid for m in listed] == [templated.sid, created.sid]  # type: ignore[attr-defined]
    assert isinstance(recent, list)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": "whatsapp:5551234567", "body": "x"}, 21211),
        ({"to": f"whatsapp:{USER}"}, 21602),
        ({"to": f"whatsapp:{USER}", "body": "x" * 1601}, 21617),
        ({"to": f"whatsapp:{USER}", "body": "x", "content_variables": "{}"}, 21654),
    ],
)
async def test_official_client_raises_twilio_errors(kwargs: dict[str, str], code: int) -> None:
    with trio.fail_after(20):
        async with serve_twilio() as twilio:
            client = client_for(twilio)

            def attempt() -> TwilioRestException:
                with pytest.raises(TwilioRestException) as caught:
                    client.messages.create(from_=twilio.whatsapp_from, **kwargs)
                return caught.value

            error = await in_thread(client, attempt)
    assert (error.status, error.code) == (400, code)


async def test_official_client_sees_401_for_a_wrong_token() -> None:
    with trio.fail_after(20):
        async with serve_twilio() as twilio:
            client = client_for(twilio, token="f" * 32)

            def attempt() -> TwilioRestException:
                with pytest.raises(TwilioRestException) as caught:
                    client.messages.create(
                        to=f"whatsapp:{USER}", from_=twilio.whatsapp_from, body="x"
                    )
                return caught.value

            error = await in_thread(client, attempt)
    assert (error.status, error.code) == (401, 20003)
    assert twilio.auth_token not in str(error)


async def test_official_client_fetch_of_unknown_message_is_404() -> None:
    with trio.fail_after(20):
        async with serve_twilio() as twilio:
            client = client_for(twilio)

            def attempt() -> TwilioRestException:
                with pytest.raises(TwilioRestException) as caught:
                    client.messages("SM" + "0" * 32).fetch()
                return caught.value

            error = await in_thread(client, attempt)
    assert (error.status, error.code) == (404, 20404)
