"""Faults the REST API can be told to commit: 429, 5xx, slow or held answers, dropped connections.

A fault is armed for the next N API requests, or for the requests about one phone (the
``To`` of a create, or the ``To`` filter of a list). The control API (``/_sandbox/…``) is
never faulted, so a test can always disarm what it armed, and release what is held.

A held request (``Fault.held``) waits, with its connection open, until it is released
(`FaultPlan.release`, ``POST /_sandbox/held/release``) or the stand-in stops serving: a
deterministic window for killing the client while its request is in flight. By default
the request is done first (a create's message exists, and listing or fetching finds it)
and only the answer waits; ``before_request=True`` holds it before anything is done (the
request has not reached Twilio). While held it is listed in `FaultPlan.held`, and
`FaultPlan.wait_held` wakes whoever waits for it.

Faults act in a thin ASGI layer in front of the routes because a dropped connection
cannot be expressed in plain ASGI: the layer asks the stand-ins' server to close the
connection before any response byte is written (its ``aftercall.drop`` extension), which is
what a client sees when a load balancer resets a connection.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Literal
from urllib.parse import parse_qs, parse_qsl

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
    ``Fault.server_error(503)``, ``Fault.slow(20.0)``, ``Fault.dropped()``,
    ``Fault.answer_delayed(30.0)``, ``Fault.held()``.
    """

    kind: Literal["http", "slow", "drop", "answer_delayed", "held"]
    status: int | None = None
    retry_after: int | None = None
    seconds: float = 0.0
    #: For ``held``: hold the request before it is done, not only its answer.
    before_request: bool = False

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

    @classmethod
    def held(cls, *, before_request: bool = False) -> Fault:
        """Hold the request until it is released (`FaultPlan.release`), or for ever.

        By default the request is done at once and only its answer is held: a create has
        created its message (listing and fetching find it, its statuses advance), but the
        client learns nothing until the release. With ``before_request`` nothing is done
        until the release: the request has not reached Twilio. A release after the
        client has gone still does the request (one that reaches Twilio late); a request
        held when the stand-in stops serving is never done.
        """
        return cls(kind="held", before_request=before_request)


@attrs.frozen
class ArmedFault:
    """A fault waiting for requests: ``times`` left (None: until cleared), maybe one phone."""

    fault: Fault
    times: int | None
    phone: str | None


@attrs.define(eq=False)
class HeldRequest:
    """An API request a ``held`` fault is holding.

    ``fields`` are its form (a POST) or its query string (a GET), the first value of
    each; ``done`` says whether the request was done before it was held (its message
    exists) or waits to be done at its release.
    """

    method: str
    path: str
    phone: str | None
    fields: Mapping[str, str]
    done: bool
    _released: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)

    def release(self) -> None:
        self._released.set()

    async def wait_released(self) -> None:
        await self._released.wait()


@attrs.define
class FaultPlan:
    """The armed faults, first armed first served, and the requests held now."""

    armed: list[ArmedFault] = attrs.Factory(list)
    #: Requests held now, oldest first; a released request leaves the list at once.
    held: list[HeldRequest] = attrs.Factory(list)
    #: Set, then replaced, whenever a request starts being held: wakes `wait_held`.
    _held_changed: trio.Event | None = attrs.field(default=None, init=False, repr=False, eq=False)

    def arm(self, fault: Fault, *, times: int | None = 1, phone: str | None = None) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for until cleared)")
        self.armed.append(ArmedFault(fault, times, e164(phone) if phone else None))

    def clear(self) -> None:
        """Disarm every fault; requests already held stay held until released."""
        self.armed.clear()

    def holding(self, phone: str | None = None) -> list[HeldRequest]:
        """The requests held now (about ``phone``, if given), oldest first."""
        wanted = e164(phone) if phone else None
        return [held for held in self.held if wanted is None or held.phone == wanted]

    async def wait_held(self, phone: str | None = None, count: int = 1) -> list[HeldRequest]:
        """Wait until at least ``count`` requests (about ``phone``) are held; return them.

        Woken by each request that starts being held, so a test waits without polling.
        """
        while len(found := self.holding(phone)) < count:
            if self._held_changed is None:
                self._held_changed = trio.Event()
            await self._held_changed.wait()
        return found

    def release(self, phone: str | None = None) -> int:
        """Let the requests held now (about ``phone``, if given) go on; returns how many."""
        released = self.holding(phone)
        for held in released:
            self.held.remove(held)
            held.release()
        return len(released)

    async def hold(self, held: HeldRequest) -> None:
        """Hold one request until it is released (or the caller is cancelled)."""
        self.held.append(held)
        changed, self._held_changed = self._held_changed, None
        if changed is not None:
            changed.set()
        try:
            await held.wait_released()
        finally:
            if held in self.held:  # cancelled while held: the stand-in stopped serving
                self.held.remove(held)

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


def _request_fields(scope: Scope, body: bytes) -> dict[str, str]:
    """A request's form (a POST) or query string (otherwise), the first value of each."""
    text = body if scope["method"] == "POST" else scope.get("query_string", b"")
    fields: dict[str, str] = {}
    for name, value in parse_qsl(text.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


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
        phone = _request_phone(scope, body) if plan.armed else None
        fault = plan.take(phone) if plan.armed else None
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

        if fault is not None and fault.kind in ("answer_delayed", "held"):
            if fault.kind == "held" and fault.before_request:
                await plan.hold(_held(scope, body, phone, done=False))
                await app(scope, replay, send)
                return
            answer: list[Message] = []

            async def keep(message: Message) -> None:
                answer.append(message)

            await app(scope, replay, keep)
            if fault.kind == "held":
                await plan.hold(_held(scope, body, phone, done=True))
            else:
                await trio.sleep(fault.seconds)
            for message in answer:
                await send(message)
            return
        await app(scope, replay, send)

    return wrapped


def _held(scope: Scope, body: bytes, phone: str | None, *, done: bool) -> HeldRequest:
    return HeldRequest(scope["method"], scope["path"], phone, _request_fields(scope, body), done)


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
