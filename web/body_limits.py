"""Request body limits for every transfer encoding, and a request body that is always read.

Two problems, one ASGI middleware (installed by ``web.factory.create_app`` around the whole
app, so no handler has to remember either):

* A limit checked through ``Content-Length`` alone lets a chunked body of any size through.
  Here each path prefix has a limit (``BODY_LIMITS``) and the bytes are counted as they
  arrive: past the limit the handler is cancelled and the answer is 413, whatever the
  encoding. A declared ``Content-Length`` past the limit is refused before the app runs.
* A connection could hang for good, the client's next request on it included, when the
  app answered before the whole body had arrived (a 405, a 401, a 413 to a large body;
  ``tests/web/test_body_limits.py`` reproduces it). Two causes: Hypercorn (0.18) hands the
  body over through a queue of ``max_app_queue_size`` messages and its connection task
  waits on that queue, which nobody empties once the app has answered; and Quart-Trio
  cancels the handler on the disconnect Hypercorn sends from inside the handler's last
  send, which cuts short Hypercorn's closing of a connection whose body was not all read.
  So the body is read here, by a task of this middleware, until the client goes (the app
  gets it through a channel while it runs; what arrives after the app is done is dropped),
  and the last send of an answer is shielded from that cancellation. An answer that goes
  out before the body has all arrived says ``Connection: close``, as Hypercorn then closes
  the connection (``web.hypercorn_fixes`` makes that close safe).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import attrs
import trio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Twilio's webhook forms are a few KiB (a 1,600-character body, media URLs, a few dozen
#: fields); anything far larger is not Twilio.
TWILIO_FORM_LIMIT = 64 * 1024
#: A post-call webhook carries a whole transcript and its analysis.
POST_CALL_LIMIT = 16 * 1024 * 1024
#: Everything else (the API, health, the console's forms) takes small bodies or none.
DEFAULT_LIMIT = 64 * 1024
_CLOSE = (b"connection", b"close")


@attrs.frozen
class BodyLimit:
    """The most bytes a request body under ``prefix`` may have."""

    prefix: str
    limit: int


#: First match wins.
BODY_LIMITS: tuple[BodyLimit, ...] = (
    BodyLimit("/webhooks/twilio/", TWILIO_FORM_LIMIT),
    BodyLimit("/webhooks/elevenlabs/", POST_CALL_LIMIT),
)


def limit_for(path: str, limits: Sequence[BodyLimit] = BODY_LIMITS) -> int:
    """The body limit of a request path."""
    for rule in limits:
        if path.startswith(rule.prefix):
            return rule.limit
    return DEFAULT_LIMIT


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or ``None`` when it has none (chunked, or no
    body); h11 has already refused malformed values."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


@attrs.define(eq=False)
class BodyLimits:
    """ASGI middleware: ``limits`` by path, and the body always read (module docstring)."""

    app: ASGIApp
    limits: Sequence[BodyLimit] = BODY_LIMITS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(scope["path"], self.limits)
        declared = declared_length(scope)
        exchange = _Exchange(send, limit)
        async with trio.open_nursery() as nursery:
            # Unbounded in messages, bounded in bytes: at most ``limit`` reach the channel.
            to_app, app_inbox = trio.open_memory_channel[Message](math.inf)
            nursery.start_soon(exchange.read_body, receive, to_app)
            if declared is not None and declared > limit:
                await exchange.too_large()
            else:
                with exchange.app_scope:
                    async with app_inbox:
                        await self.app(scope, app_inbox.receive, exchange.send)
                if exchange.over_limit:
                    await exchange.too_large()
            if not exchange.response_complete:
                # No complete answer (the app stopped mid-answer): Hypercorn ends the stream
                # once this call returns, and only then says the client is gone.
                nursery.cancel_scope.cancel()
            # Otherwise the reader runs on until the disconnect that ends every exchange.


@attrs.define(eq=False)
class _Exchange:
    """One request's body reader and response sender."""

    _send: Send
    limit: int
    app_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    over_limit: bool = False
    response_started: bool = False
    response_complete: bool = False
    #: Set once the whole body has arrived or the client has gone.
    body_ended: trio.Event = attrs.field(factory=trio.Event)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
            if not self.body_ended.is_set():
                # Answered before the body has all arrived: Hypercorn will close the
                # connection after this answer, so say so (a client would otherwise send
                # its next request on it and wait for an answer that never comes).
                message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
        if message["type"] != "http.response.body" or message.get("more_body", False):
            await self._send(message)
            return
        # The last send ends the stream: inside it Hypercorn hands the app the disconnect,
        # and then, if the body was not all read, closes the connection. Quart-Trio cancels
        # the handler as soon as it sees that disconnect, which would cut the close short
        # at its first checkpoint and leave the connection open and unread for good.
        with trio.CancelScope(shield=True):
            await self._send(message)
        self.response_complete = True

    async def read_body(self, receive: Receive, to_app: trio.MemorySendChannel[Message]) -> None:
        """Read until the client's disconnect, which Hypercorn also sends once the response
        is complete: the whole body, however much of it the app reads. The body goes on to
        the app up to the limit; past it, the app gets nothing more and is cancelled unless
        it has begun its answer."""
        received = 0
        async with to_app:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.body_ended.set()
                    _offer(to_app, message)
                    return
                received += len(message.get("body", b""))
                if received > self.limit and not self.over_limit:
                    self.over_limit = True
                    if not self.response_started:
                        # An answer under way is left to finish: cut short inside Hypercorn's
                        # send, it would never end the stream.
                        self.app_scope.cancel()
                if not self.over_limit:
                    _offer(to_app, message)
                if not message.get("more_body", False):
                    self.body_ended.set()

    async def too_large(self) -> None:
        """Answer 413 unless the app has already begun its answer (then it stands)."""
        if self.response_started:
            return
        body = json.dumps(
            {"error": f"a request body to this path is at most {self.limit} bytes"}
        ).encode()
        await self.send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


def _offer(channel: trio.MemorySendChannel[Message], message: Message) -> None:
    """Pass a message to the app, or drop it once the app has stopped listening."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        channel.send_nowait(message)
