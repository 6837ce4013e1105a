"""The stand-ins' own HTTP server: ASGI over HTTP/1.1 (h11) and WebSocket (wsproto), on Trio.

aftercall runs on Hypercorn (the design card); the stand-ins need not, and the benchmark
is why they do not. It runs the stand-ins and the simulated users in one process beside
aftercall, on the same two cores, so whatever the stand-ins spend serving a request is
taken from what aftercall can be measured doing. Hypercorn's Trio worker spawns a task
per request and restarts a keep-alive timer task (a cancellation) after every response:
a small form-reading app costs about 2.5x the server CPU per request under it than here
(``python -m benchmarks.standin_server``, 1 and 32 connections).

What this server does, and all it does:
- HTTP/1.1 with keep-alive; request bodies by Content-Length or chunked (at most
  `MAX_BODY`); a response sent in one piece gets a Content-Length, a streamed one
  (``more_body``) is chunked; ``Expect: 100-continue`` is answered.
- WebSocket upgrades: text and binary messages (at most `MAX_BODY`), pings answered,
  close codes both ways (a client's close reaches the app as its code, a vanished client
  as 1006), a handshake refused with 403 or, through the ``websocket.http.response``
  extension, with the app's own HTTP response.
- The lifespan protocol, so a Quart app's start-up and shut-down hooks run.
- One extension of its own, ``aftercall.drop``: the app sends ``{"type":
  "aftercall.drop"}`` and the connection is closed without a byte of response, which is
  what a client sees when a load balancer resets it (the Twilio stand-in's fault).

Not supported, because no stand-in needs them: HTTP/2, TLS, HTTP/1.0 keep-alive, trailers.
An app that fails before answering gets a 500 (and the error is logged); after it started
answering, the connection is closed. Leaving the block stops listening and closes every
connection at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager, suppress
from typing import Any, Final
from urllib.parse import unquote

import h11
import trio
import wsproto
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WSLocalProtocolError
from wsproto.utilities import RemoteProtocolError as WSRemoteProtocolError

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

#: The largest request body or WebSocket message accepted (a post-call transcript is the
#: largest thing any stand-in is sent, and is far smaller).
MAX_BODY: Final = 16 * 1024 * 1024
DROP: Final = "aftercall.drop"
_READ_SIZE: Final = 65536
_EXTENSIONS: Final[dict[str, dict[str, Any]]] = {DROP: {}}
_WS_EXTENSIONS: Final[dict[str, dict[str, Any]]] = {"websocket.http.response": {}, DROP: {}}
#: Messages from a WebSocket client waiting for the app; past this the reader waits too.
_WS_QUEUE: Final = 64
_LIFESPAN_TIMEOUT: Final = 10.0
#: How long a WebSocket closed by the app waits for the client's close frame.
_CLOSE_WAIT: Final = 5.0


class _Dropped(Exception):
    """The app asked for its connection to be closed without an answer."""


@asynccontextmanager
async def serve_standin(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (``http://127.0.0.1:PORT``).

    Port 0 asks the kernel for a free port, so tests never collide.
    """
    async with trio.open_nursery() as nursery:
        lifespan = _Lifespan(app)
        await nursery.start(lifespan.run)
        try:
            await lifespan.startup()
            listeners = await trio.open_tcp_listeners(port, host=host)
            bound_host, bound_port = listeners[0].socket.getsockname()[:2]
            server = (bound_host, bound_port)
            async with trio.open_nursery() as connections:
                connections.start_soon(_accept_forever, listeners, app, server, connections)
                try:
                    yield f"http://{bound_host}:{bound_port}"
                finally:
                    connections.cancel_scope.cancel()
            await lifespan.shutdown()
        finally:
            nursery.cancel_scope.cancel()


async def _accept_forever(
    listeners: list[trio.SocketListener],
    app: ASGIApp,
    server: tuple[str, int],
    connections: trio.Nursery,
) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError, _Dropped):
                await _Connection(app, stream, server).serve()

    await trio.serve_listeners(handle, listeners, handler_nursery=connections)


class _Lifespan:
    """The app's lifespan task: start-up before the first connection, shut-down after the
    last. An app without lifespan support (it raises, or answers nothing) is served anyway."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._to_app, self._from_server = trio.open_memory_channel[Message](2)
        self._answers, self._from_app = trio.open_memory_channel[Message](2)
        self._supported = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        try:
            await self._app(scope, self._from_server.receive, self._answers.send)
        except Exception:
            logger.debug("the app does not support the lifespan protocol", exc_info=True)
        self._supported = False
        self._answers.close()

    async def startup(self) -> None:
        await self._exchange("startup")

    async def shutdown(self) -> None:
        with trio.move_on_after(_LIFESPAN_TIMEOUT):
            await self._exchange("shutdown")

    async def _exchange(self, phase: str) -> None:
        if not self._supported:
            return
        await self._to_app.send({"type": f"lifespan.{phase}"})
        try:
            answer = await self._from_app.receive()
        except trio.EndOfChannel:
            return  # the app ended its lifespan: not supported
        if answer["type"] == f"lifespan.{phase}.failed":
            raise RuntimeError(f"the app failed its {phase}: {answer.get('message', '')}")


class _Connection:
    """One client connection: HTTP requests one after another, or one WebSocket."""

    def __init__(self, app: ASGIApp, stream: trio.SocketStream, server: tuple[str, int]) -> None:
        self.app = app
        self.stream = stream
        self.server = server
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            peer = stream.socket.getpeername()
            self.client: tuple[str, int] = (peer[0], peer[1])
        except OSError:
            self.client = ("", 0)

    async def serve(self) -> None:
        while True:
            try:
                request = await self._next_request()
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, str(exc))
                return
            if request is None:
                return
            if _is_websocket_upgrade(request):
                await _WebSocket(self, request).serve()
                return
            try:
                body = await self._read_body()
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, str(exc))
                return
            except _TooLarge:
                await self._refuse(413, f"a request body is at most {MAX_BODY} bytes")
                return
            await self._run_http(request, body)
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return  # Connection: close, or the answer was cut short
            self.h11.start_next_cycle()

    # -- reading --------------------------------------------------------------------------
    async def _next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.h11.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            data = await self.stream.receive_some(_READ_SIZE)
            self.h11.receive_data(bytes(data))  # b"" tells h11 the client closed

    async def _next_request(self) -> h11.Request | None:
        event = await self._next_event()
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed (or PAUSED after a protocol switch)

    async def _read_body(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise _TooLarge
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # the client went away mid-body
                raise trio.BrokenResourceError("the client closed the connection mid-request")

    # -- writing --------------------------------------------------------------------------
    async def _send(self, *events: Any) -> None:
        data = b"".join(self.h11.send(event) or b"" for event in events)
        await self.stream.send_all(data)

    async def _refuse(self, status: int, reason: str) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = reason.encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            await self._send(h11.Response(status_code=status, headers=headers), h11.Data(data=body))
            await self._send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            pass

    # -- one HTTP request -----------------------------------------------------------------
    async def _run_http(self, request: h11.Request, body: bytes) -> None:
        path, _, query = request.target.partition(b"?")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode(),
            "method": request.method.decode(),
            "scheme": "http",
            "path": _decode_path(path),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.client,
            "server": self.server,
            "extensions": _EXTENSIONS,
        }
        answer = _HttpAnswer(self, head=request.method == b"HEAD")
        delivered = False
        finished = trio.Event()

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        try:
            await self.app(scope, receive, answer.send)
        except (_Dropped, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            logger.exception("stand-in app failed on %s %s", scope["method"], scope["path"])
            if not answer.started:
                await self._refuse(500, "Internal Server Error")
            return
        finally:
            finished.set()
        if not answer.started:
            logger.error("stand-in app gave no answer to %s %s", scope["method"], scope["path"])
            await self._refuse(500, "Internal Server Error")
        elif not answer.done:
            await answer.send({"type": "http.response.body", "body": b"", "more_body": False})


class _TooLarge(Exception):
    pass


class _HttpAnswer:
    """The ``send`` of one HTTP request: a response in one write when it comes in one
    piece (almost always), chunked when the app streams it."""

    def __init__(self, connection: _Connection, *, head: bool) -> None:
        self._connection = connection
        self._head = head
        self._start: Message | None = None
        self.started = False
        self.done = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == DROP:
            self._connection.stream.socket.close()
            raise _Dropped
        if kind == "http.response.start":
            if self._start is not None:
                raise RuntimeError("http.response.start sent twice")
            self._start = message
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r} for an HTTP request")
        if self._start is None:
            raise RuntimeError("http.response.body before http.response.start")
        if self.done:
            return
        body = b"" if self._head else bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        events: list[Any] = []
        if not self.started:
            self.started = True
            headers = [(bytes(k), bytes(v)) for k, v in self._start.get("headers", [])]
            if not more and not any(k.lower() == b"content-length" for k, _ in headers):
                headers.append((b"content-length", str(len(body)).encode()))
            events.append(h11.Response(status_code=int(self._start["status"]), headers=headers))
        if body:
            events.append(h11.Data(data=body))
        if not more:
            events.append(h11.EndOfMessage())
            self.done = True
        await self._connection._send(*events)


def _is_websocket_upgrade(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


def _decode_path(raw: bytes) -> str:
    return unquote(raw.decode("latin-1"))


class _WebSocket:
    """One WebSocket connection, from the upgrade request to the close."""

    def __init__(self, connection: _Connection, request: h11.Request) -> None:
        self.connection = connection
        self.stream = connection.stream
        self.request = request
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.accepted = False
        self.closed = False
        #: A refusal with the app's own HTTP response (``websocket.http.response``).
        self.rejection: RejectConnection | None = None
        self._rejection_sent = False
        self._send_lock = trio.Lock()
        self._to_app, self._for_app = trio.open_memory_channel[Message](_WS_QUEUE)
        #: The client's close frame has come (or its connection ended).
        self._client_done = trio.Event()

    async def serve(self) -> None:
        request = self.request
        try:
            self.ws.initiate_upgrade_connection(list(request.headers), request.target)
            upgrade = next(iter(self.ws.events()))
        except (WSRemoteProtocolError, StopIteration) as exc:
            await self.connection._refuse(400, f"not a valid WebSocket upgrade: {exc}")
            return
        path, _, query = request.target.partition(b"?")
        scope: Scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": _decode_path(path),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.connection.client,
            "server": self.connection.server,
            "subprotocols": list(getattr(upgrade, "subprotocols", [])),
            "extensions": _WS_EXTENSIONS,
        }
        # Bytes h11 read past the upgrade request (a client that did not wait for the 101).
        leftover, _ = self.connection.h11.trailing_data
        await self._to_app.send({"type": "websocket.connect"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, bytes(leftover))
            try:
                await self.connection.app(scope, self._for_app.receive, self.send)
            except (_Dropped, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:
                logger.exception("stand-in app failed on the WebSocket %s", scope["path"])
                await self._after_app(failed=True)
            else:
                await self._after_app(failed=False)
            if self.accepted:
                # RFC 6455 §7.1.1: the server closes TCP once both close frames have
                # crossed; a client cut off before its own close frame is out sees an
                # abnormal closure instead of ours.
                with trio.move_on_after(_CLOSE_WAIT):
                    await self._client_done.wait()
            nursery.cancel_scope.cancel()

    async def _after_app(self, *, failed: bool) -> None:
        """What Hypercorn does when a WebSocket app returns: a handshake never answered is
        a 500, an open connection is closed (1011 after a failure, else 1000)."""
        if self.closed:
            return
        if not self.accepted:
            await self._send_bytes(self._reject_bytes(500, b""))
        else:
            await self.send({"type": "websocket.close", "code": 1011 if failed else 1000})
        self.closed = True

    # -- from the client ------------------------------------------------------------------
    async def _read(self, leftover: bytes) -> None:
        texts: list[str] = []
        blobs: list[bytes] = []
        size = 0
        pending = leftover
        try:
            while True:
                if pending:
                    self.ws.receive_data(pending)
                    pending = b""
                for event in self.ws.events():
                    if isinstance(event, TextMessage):
                        texts.append(event.data)
                        size += len(event.data)
                    elif isinstance(event, BytesMessage):
                        blobs.append(bytes(event.data))
                        size += len(event.data)
                    elif isinstance(event, Ping):
                        await self._send_event(event.response())
                        continue
                    elif isinstance(event, CloseConnection):
                        await self._client_closed(event)
                        return
                    else:
                        continue
                    if size > MAX_BODY:
                        await self.send({"type": "websocket.close", "code": 1009})
                        await self._disconnected(1009)
                        return
                    if event.message_finished:
                        if isinstance(event, TextMessage):
                            message: Message = {"type": "websocket.receive", "text": "".join(texts)}
                        else:
                            message = {"type": "websocket.receive", "bytes": b"".join(blobs)}
                        texts, blobs, size = [], [], 0
                        if not self.closed:  # after our close frame, messages are dropped
                            await self._to_app.send(message)
                data = await self.stream.receive_some(_READ_SIZE)
                if not data:
                    break
                pending = bytes(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, WSRemoteProtocolError):
            pass
        await self._disconnected(1006)

    async def _client_closed(self, event: CloseConnection) -> None:
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._send_event(event.response())
        await self._disconnected(event.code)

    async def _disconnected(self, code: int) -> None:
        self.closed = True
        self._client_done.set()
        # The app may not be reading any more; it learns of the close at its next receive.
        try:
            self._to_app.send_nowait({"type": "websocket.disconnect", "code": code})
        except trio.WouldBlock:
            await self._to_app.send({"type": "websocket.disconnect", "code": code})

    # -- from the app ---------------------------------------------------------------------
    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == DROP:
            self.stream.socket.close()
            raise _Dropped
        if self.closed:
            return  # as Hypercorn: an app may finish sending after the client left
        if kind == "websocket.accept" and not self.accepted and self.rejection is None:
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            # Raises (an app error, answered 500) for a subprotocol the client did not offer.
            data = self.ws.send(
                AcceptConnection(subprotocol=message.get("subprotocol"), extra_headers=headers)
            )
            self.accepted = True
            await self._send_bytes(data)
        elif kind == "websocket.send" and self.accepted:
            if message.get("bytes") is not None:
                await self._send_event(BytesMessage(data=bytes(message["bytes"])))
            else:
                text = message.get("text")
                if not isinstance(text, str):
                    raise TypeError(f"websocket.send text must be a str, not {type(text)}")
                await self._send_event(TextMessage(data=text))
        elif kind == "websocket.close" and not self.accepted:
            self.closed = True
            await self._send_bytes(self._reject_bytes(403, b""))
        elif kind == "websocket.close":
            self.closed = True
            code = int(message.get("code") or 1000)
            await self._send_event(CloseConnection(code=code, reason=message.get("reason")))
        elif kind == "websocket.http.response.start" and not self.accepted:
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            self.rejection = RejectConnection(
                status_code=int(message["status"]), headers=headers, has_body=True
            )
        elif kind == "websocket.http.response.body" and self.rejection is not None:
            data = b""
            if not self._rejection_sent:
                self._rejection_sent = True
                data = self.ws.send(self.rejection)
            more = bool(message.get("more_body", False))
            data += self.ws.send(
                RejectData(data=bytes(message.get("body", b"")), body_finished=not more)
            )
            self.closed = not more
            await self._send_bytes(data)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for this WebSocket")

    def _reject_bytes(self, status: int, body: bytes) -> bytes:
        headers = [(b"content-length", str(len(body)).encode())]
        try:
            data = self.ws.send(
                RejectConnection(status_code=status, headers=headers, has_body=bool(body))
            )
            if body:
                data += self.ws.send(RejectData(data=body, body_finished=True))
        except WSLocalProtocolError:
            return b""
        return data

    async def _send_event(self, event: Any) -> None:
        try:
            data = self.ws.send(event)
        except WSLocalProtocolError:
            return  # the connection is past the state that allows it (a close crossed ours)
        await self._send_bytes(data)

    async def _send_bytes(self, data: bytes) -> None:
        if not data:
            return
        async with self._send_lock:
            await self.stream.send_all(data)
