"""A lean HTTP/1.1 transport for httpx: keep-alive connections on Trio, spoken with h11.

Why: the WhatsApp sender makes one Twilio request per reply part, and httpx's default
transport (httpcore) was the largest single cost of a message in aftercall's process:
its pool walks every pooled connection, asking each whether it has expired (a poll system
call each), for every request, and its layers of streams, locks and shields run again
per request. This transport keeps what the sender needs and nothing else:

- a stack of idle connections per origin; a request takes the most recently used one
  (checked once for a close by the server, and for its keep-alive age) or opens another;
- HTTP/1.1 with keep-alive, https through `trio.SSLStream` with the default context
  (certificates verified, SNI), http for the local stand-ins;
- the whole response body is read before returning (Twilio's answers are small JSON);
- httpx's own exceptions, so callers tell "never sent" (`httpx.ConnectError`,
  `httpx.ConnectTimeout`) from "sent, no answer" (`httpx.ReadTimeout`,
  `httpx.RemoteProtocolError`...) exactly as with the default transport;
- a connection interrupted in any way (cancelled, timed out, a protocol error, a response
  that says ``Connection: close``) is closed, never reused.

Not supported, because the sender never asks for them: HTTP/2, proxies, streaming
responses, ``Expect: 100-continue``, upgrades. Used through ``httpx.AsyncClient(transport=
Http1Transport())``: the client still does auth, headers, timeouts and URL building.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Final

import attrs
import h11
import httpx
import trio

#: An idle connection older than this is closed rather than reused: servers drop idle
#: keep-alive connections after a few seconds, and a request on one they are closing fails
#: after it was sent, an ambiguous outcome the sender must then reconcile. httpcore's value.
KEEPALIVE_EXPIRY: Final = 5.0
#: Idle connections kept per origin by default; more are closed when returned.
MAX_IDLE_PER_ORIGIN: Final = 20
_READ_SIZE: Final = 65536

Origin = tuple[bytes, bytes, int]  # scheme, host, port


@attrs.define(eq=False)
class _Connection:
    stream: trio.abc.Stream
    socket: trio.socket.SocketType
    h11: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0

    def reusable(self, now: float) -> bool:
        """Idle long enough ago to trust, and not readable: a server that closed an idle
        connection (or sent anything unasked) makes its socket readable."""
        return now - self.idle_since < KEEPALIVE_EXPIRY and not self.socket.is_readable()

    def discard(self) -> None:
        """Close at once, without a TLS goodbye: synchronous, so it cannot be interrupted
        by a cancellation, and nothing is left for the garbage collector to find open."""
        self.socket.close()


@attrs.define(eq=False)
class Http1Transport(httpx.AsyncBaseTransport):
    """httpx transport over Trio sockets; see the module docstring for what it leaves out."""

    ssl_context: ssl.SSLContext | None = None
    #: Idle connections kept per origin: as many as requests run at once, or connections
    #: are opened and closed again under load.
    max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN
    _idle: dict[Origin, list[_Connection]] = attrs.field(factory=dict, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("this transport is closed")
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"cannot send a request to {url.scheme!r} URLs")
        origin: Origin = (url.raw_scheme, url.raw_host, url.port or _default_port(url.scheme))
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        connection = self._idle_connection(origin)
        if connection is None:
            connection = await self._connect(origin, timeouts.get("connect"))
        try:
            response = await self._exchange(connection, request, body, timeouts)
        except BaseException:
            connection.discard()
            raise
        if (
            connection.h11.our_state is h11.DONE
            and connection.h11.their_state is h11.DONE
            and not self._closed
        ):
            connection.h11.start_next_cycle()
            connection.idle_since = trio.current_time()
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.max_idle_per_origin:
                idle.append(connection)
                return response
        connection.discard()
        return response

    async def aclose(self) -> None:
        # No checkpoint in here: a closing that is itself cancelled still closes them all.
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.discard()

    # -- connections ----------------------------------------------------------------------
    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest still open
            if connection.reusable(now):
                return connection
            connection.discard()  # expired or closed by the server
        return None

    async def _connect(self, origin: Origin, seconds: float | None) -> _Connection:
        scheme, host, port = origin
        hostname = host.decode("ascii")
        with _mapped(httpx.ConnectError, httpx.ConnectTimeout, seconds):
            tcp = await trio.open_tcp_stream(hostname, port)
            stream: trio.abc.Stream = tcp
            if scheme == b"https":
                context = self.ssl_context or _default_ssl_context()
                tls = trio.SSLStream(tcp, context, server_hostname=hostname, https_compatible=True)
                try:
                    await tls.do_handshake()
                except BaseException:
                    tcp.socket.close()
                    raise
                stream = tls
        return _Connection(stream, tcp.socket)

    # -- one exchange -----------------------------------------------------------------------
    async def _exchange(
        self,
        connection: _Connection,
        request: httpx.Request,
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        conn = connection.h11
        headers = list(request.headers.raw)
        target = request.url.raw_path
        events: list[h11.Event] = [
            h11.Request(method=request.method, target=target, headers=headers),
        ]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        try:
            data = b"".join(conn.send(event) or b"" for event in events)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        with _mapped(httpx.WriteError, httpx.WriteTimeout, timeouts.get("write")):
            await connection.stream.send_all(data)

        status = 0
        response_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        read_timeout = timeouts.get("read")
        while True:
            event = await self._next_event(connection, read_timeout)
            if isinstance(event, h11.Response):
                status = event.status_code
                response_headers = list(event.headers)
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        return httpx.Response(
            status_code=status,
            headers=response_headers,
            content=b"".join(chunks),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def _next_event(self, connection: _Connection, seconds: float | None) -> h11.Event:
        conn = connection.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is h11.NEED_DATA:
                with _mapped(httpx.ReadError, httpx.ReadTimeout, seconds):
                    data = await connection.stream.receive_some(_READ_SIZE)
                if not data and conn.their_state is h11.SEND_RESPONSE:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                conn.receive_data(bytes(data))
                continue
            if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("the server closed the connection mid-response")
            assert isinstance(event, h11.Event)
            return event


class _mapped:
    """Run the block within ``seconds``; socket and TLS failures become httpx's ``error``.

    A class rather than ``@contextmanager`` (and a bare `trio.CancelScope` rather than
    `trio.fail_after`, itself a generator): it wraps every read and write of every
    request, and generator-based context managers cost several times as much.
    """

    __slots__ = ("_error", "_scope", "_seconds", "_timeout_error")

    def __init__(
        self,
        error: type[httpx.TransportError],
        timeout_error: type[httpx.TimeoutException],
        seconds: float | None,
    ) -> None:
        self._error = error
        self._timeout_error = timeout_error
        self._seconds = seconds
        self._scope: trio.CancelScope | None = None

    def __enter__(self) -> None:
        if self._seconds is not None:
            self._scope = trio.CancelScope(deadline=trio.current_time() + self._seconds)
            self._scope.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        scope = self._scope
        if scope is not None:
            self._scope = None
            scope.__exit__(kind, exc, tb)
            if scope.cancelled_caught:  # our deadline passed: the Cancelled was ours
                raise self._timeout_error(f"no progress within {self._seconds:g} s")
        if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
            raise self._error(str(exc) or type(exc).__name__) from exc


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


_SSL_CONTEXT: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    """One verified client context per process (making one costs milliseconds)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT
