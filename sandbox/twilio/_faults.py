"""Faults the REST API can be told to commit: 429, 5xx, slow or held answers, dropped connections.

A fault is armed for the next N API requests, or for the requests about one phone (the
``To`` of a create, or the ``To`` filter of a list). The control API (``/_sandbox/…``) is
never faulted, so a test can always disarm what it armed.

Faults act in a thin ASGI layer in front of the routes because a dropped connection
cannot be expressed in plain ASGI: the layer asks the stand-ins' server to close the
connection before any response byte is written (its ``aftercall.drop`` extension), which is
what a client sees when a load balancer resets a connection.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal
from urllib.parse import parse_qs

import attrs
import trio

from sandbox._routing import read_body
from sandbox._standin_server import DROP
from sandbox.twilio._protocol import e164, new_sid
from sandbox.twilio._values import API_VERSION, ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: Loose on purpose: precise ASGI types (Quart's, the router's) are not assignable to one signature.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_HTTP_ERRORS = {
    429: ApiError(status=429, code=20429, message="Too Many Requests"),
    500: ApiError(status=500, code=20500, message="An internal server error has occurred"),
    503: ApiError(status=503, code=20503, message="Service Unavailable"),
}


@attrs.frozen
class Fault:
    """What goes wrong with one request.

    Build with the named constructors: ``Fault.rate_limited(retry_after=2)``,
    ``Fault.server_error(503)``, ``Fault.slow(20.0)``, ``Fault.dropped()``.
    """

    kind: Literal["http", "slow", "drop", "answer_delayed"]
    status: int | None = None
    retry_after: int | None = None
    seconds: float = 0.0

    @classmethod
    def rate_limited(cls, retry_after: int | None = None) -> Fault:
        """429 with code 20429; ``Retry-After`` only when given (Twilio's is unconfirmed)."""
        return cls(kind="http", status=429, retry_after=retry_after)

    @classmethod
    def server_error(cls, status: Literal[500, 503] = 500) -> Fault:
        if status not in (500, 503):
            raise ValueError("server_error status must be 500 or 503")
        return cls(kind="http", status=status)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds`` on trio's clock."""
        return cls(kind="slow", seconds=seconds)

    @classmethod
    def answer_delayed(cls, seconds: float) -> Fault:
        """Do the request at once, but hold its answer back for ``seconds``.

        What a client sees when Twilio has accepted a message and the response is lost or
        late: the message exists although the sender never learnt its sid. The case the
        outbox's look-up-before-resend exists for.
        """
        return cls(kind="answer_delayed", seconds=seconds)

    @classmethod
    def dropped(cls) -> Fault:
        """Close the connection without writing any response."""
        return cls(kind="drop")


@attrs.frozen
class ArmedFault:
    """A fault waiting for requests: ``times`` left (None: until cleared), maybe one phone."""

    fault: Fault
    times: int | None
    phone: str | None


@attrs.define
class FaultPlan:
    """The armed faults, first armed first served."""

    armed: list[ArmedFault] = attrs.Factory(list)

    def arm(self, fault: Fault, *, times: int | None = 1, phone: str | None = None) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for until cleared)")
        self.armed.append(ArmedFault(fault, times, e164(phone) if phone else None))

    def clear(self) -> None:
        self.armed.clear()

    def take(self, phone: str | None) -> Fault | None:
        """The fault for a request about ``phone`` (None: about no phone), spending one use."""
        for index, armed in enumerate(self.armed):
            if armed.phone is not None and armed.phone != phone:
                continue
            if armed.times is None:
                return armed.fault
            if armed.times == 1:
                del self.armed[index]
            else:
                self.armed[index] = attrs.evolve(armed, times=armed.times - 1)
            return armed.fault
        return None


def _request_phone(scope: Scope, body: bytes) -> str | None:
    """The phone an API request is about: ``To`` in the form or in the query string."""
    fields = parse_qs(body.decode("utf-8", "replace")) if scope["method"] == "POST" else {}
    if "To" not in fields:
        fields = parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"))
    for value in fields.get("To", []):
        try:
            return e164(value)
        except ValueError:
            return None
    return None


def faulting(app: ASGIApp, plan: FaultPlan) -> ASGIApp:
    """Wrap ``app`` so requests under ``/2010-04-01/`` obey ``plan``."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(f"/{API_VERSION}/"):
            await app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return  # the client went away before sending its request
        # Nothing armed, nothing to look up (the benchmark's every request).
        fault = plan.take(_request_phone(scope, body)) if plan.armed else None
        if fault is not None and fault.kind == "drop":
            await _drop(scope, send)
            return
        if fault is not None and fault.kind == "http":
            await _send_error(send, fault)
            return
        if fault is not None and fault.kind == "slow":
            await trio.sleep(fault.seconds)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if fault is not None and fault.kind == "answer_delayed":
            held: list[Message] = []

            async def hold(message: Message) -> None:
                held.append(message)

            await app(scope, replay, hold)
            await trio.sleep(fault.seconds)
            for message in held:
                await send(message)
            return
        await app(scope, replay, send)

    return wrapped


async def _send_error(send: Send, fault: Fault) -> None:
    assert fault.status is not None
    error = _HTTP_ERRORS[fault.status]
    payload = json.dumps(error.to_json()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"twilio-request-id", new_sid("RQ").encode()),
    ]
    if fault.retry_after is not None:
        headers.append((b"retry-after", str(fault.retry_after).encode()))
    await send({"type": "http.response.start", "status": fault.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _drop(scope: Scope, send: Send) -> None:
    """Close the connection under this request without writing a response."""
    if DROP not in scope.get("extensions", {}):
        raise RuntimeError("dropped-connection faults need the stand-ins' server (serve_standin)")
    await send({"type": DROP})
