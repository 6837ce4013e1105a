"""The Twilio stand-in's HTTP client as the app sees it: exact headers, one deadline for
an answer, kept-alive connections, dropped connections.

A raw ASGI app on the stand-ins' own server stands where aftercall would, so these tests
see the request as it came off the wire (header names, the client's port) with nothing
in between.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from sandbox._standin_server import DROP, serve_standin
from sandbox.twilio import TwilioStandIn, serve_twilio

USER = "+15551234567"
TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response />'

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _requests_only(handler: App) -> App:
    """``handler`` for HTTP requests, their body read first; the server's lifespan call is
    declined (the server then serves the app without one), so it never reaches a count."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass
        await handler(scope, receive, send)

    return app


async def _answer(send: Send, body: bytes = TWIML) -> None:
    headers = [(b"content-type", b"text/xml")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def test_a_webhook_carries_exactly_twilios_headers() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    @_requests_only
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(list(scope["headers"]))
        await _answer(send)

    with trio.fail_after(10):
        async with serve_standin(app) as url, serve_twilio() as twilio:
            twilio.webhook_url = f"{url}/inbound"
            await twilio.user_says(USER, "hi")
    [headers] = seen
    named = {name.lower(): value for name, value in headers}
    # No Accept-Encoding, Connection or python-httpx User-Agent: httpx's defaults are not
    # what Twilio sends, and an app could answer them differently.
    assert sorted(named) == [
        b"accept",
        b"content-length",
        b"content-type",
        b"host",
        b"i-twilio-idempotency-token",
        b"user-agent",
        b"x-home-region",
        b"x-twilio-signature",
    ]
    assert len(headers) == len(named)
    assert named[b"user-agent"] == b"TwilioProxy/1.1"
    assert named[b"accept"] == b"*/*"
    assert named[b"x-home-region"] == b"us1"
    assert named[b"content-type"] == b"application/x-www-form-urlencoded"
    assert named[b"host"] == url.removeprefix("http://").encode()
    assert [d.debugger_code for d in twilio.deliveries] == [None]


async def test_a_trickled_answer_is_held_to_one_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A byte every 10 s never trips a per-read timeout of 15 s; Twilio's deadline is for
    the whole answer, so the webhook fails (11205) once it has passed."""

    @_requests_only
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/xml")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for byte in TWIML:
            await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
            await trio.sleep(10)
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(600):
        async with serve_standin(app) as url, serve_twilio(TwilioStandIn()) as twilio:
            twilio.webhook_url = f"{url}/inbound"
            started = trio.current_time()
            await twilio.user_says(USER, "hi")
            took = trio.current_time() - started
    [delivery] = twilio.deliveries
    assert (delivery.status_code, delivery.debugger_code) == (None, 11205)
    assert twilio.webhook_timeout <= took < twilio.webhook_timeout + 1


async def test_webhooks_reuse_a_kept_alive_connection() -> None:
    clients: list[tuple[str, int]] = []

    @_requests_only
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clients.append(tuple(scope["client"]))
        await _answer(send)

    with trio.fail_after(10):
        async with serve_standin(app) as url, serve_twilio() as twilio:
            twilio.webhook_url = f"{url}/inbound"
            for text in ("one", "two", "three"):
                await twilio.user_says(USER, text)
    assert len(clients) == 3
    assert len(set(clients)) == 1


async def test_a_dropped_connection_is_an_11200_and_not_retried() -> None:
    """Only a connection that could not be made is retried: this request was sent."""
    requests = 0

    @_requests_only
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal requests
        requests += 1
        await send({"type": DROP})

    with trio.fail_after(10):
        async with serve_standin(app) as url, serve_twilio() as twilio:
            twilio.webhook_url = f"{url}/inbound"
            await twilio.user_says(USER, "hi")
    [delivery] = twilio.deliveries
    assert (delivery.status_code, delivery.debugger_code) == (None, 11200)
    assert requests == 1
