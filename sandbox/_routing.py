"""A small ASGI router for a stand-in's HTTP API: what the Twilio stand-in needs of a web
framework, at a fraction of a framework's cost per request.

Why not Quart, which serves aftercall: the benchmark runs the stand-ins beside aftercall
on the same cores, and the Twilio stand-in answers one Messages API request per message.
Quart's request machinery (a request context, two tasks and a cancellation per request,
header and form parsing into its own structures, the response's iteration) cost several
times what the route does. Here a request is read whole, matched against the routes in
order, handed to a plain handler as a `Request`, and answered with the handler's
`Response` in one message.

A path pattern names its parameters in angle brackets (``/Messages/<sid>.json``); a
parameter matches one path segment. An unknown path is the router's ``not_found``
answer, a known path with another method a 405.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import attrs

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@attrs.frozen
class Request:
    """One request, read whole. Header names are in lower case."""

    method: str
    path: str
    query_string: bytes
    headers: Mapping[str, str]
    body: bytes
    params: Mapping[str, str]
    #: The request's own URL origin (``http://host:port``), from its Host header.
    host_url: str

    @property
    def args(self) -> dict[str, str]:
        """The query string's parameters, the first value of each."""
        return {name: values[0] for name, values in self.all_args().items()}

    def all_args(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string.decode("utf-8", "replace"), keep_blank_values=True)

    def form(self) -> dict[str, list[str]]:
        """An urlencoded body: every value of each name."""
        return parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)

    def json(self) -> Any:
        """The JSON body, or None when it is missing or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None


def json_response(
    payload: object, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    return Response(status, json.dumps(payload).encode(), headers, "application/json")


Handler = Callable[[Request], Awaitable[Response]]


@attrs.frozen
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


def _compile(path: str) -> re.Pattern[str]:
    parts = re.split(r"<([a-z_]+)>", path)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


class Router:
    """Routes in the order they were added; an ASGI app (``http`` and ``lifespan``)."""

    def __init__(self, not_found: Callable[[Request], Response]) -> None:
        self._routes: list[_Route] = []
        self._not_found = not_found

    def route(self, method: str, *paths: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            for path in paths:
                self._routes.append(_Route(method, _compile(path), handler))
            return handler

        return register

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"the router serves HTTP only, not {scope['type']!r}")
        body = await read_body(receive)
        if body is None:
            return  # the client went away before its request was whole
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b""),
            headers=headers,
            body=body,
            params={},
            host_url=f"{scope.get('scheme', 'http')}://{headers.get('host', '')}",
        )
        response = await self._dispatch(request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": _header_list(response),
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _dispatch(self, request: Request) -> Response:
        allowed = False
        for route in self._routes:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            if route.method != request.method:
                allowed = True
                continue
            return await route.handler(attrs.evolve(request, params=match.groupdict()))
        if allowed:
            return json_response({"error": f"{request.method} is not allowed here"}, 405)
        return self._not_found(request)


async def read_body(receive: Receive) -> bytes | None:
    """An HTTP request's whole body from its ASGI messages; None if the client went away
    first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header_list(response: Response) -> list[tuple[bytes, bytes]]:
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
               for name, value in response.headers]  # fmt: skip
    if response.content_type is not None:
        headers.append((b"content-type", response.content_type.encode("latin-1")))
    headers.append((b"content-length", str(len(response.body)).encode()))
    return headers


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
