"""A lean HTTP/1.1 client transport on Trio, spoken with h11; also an httpx transport.

Why: the WhatsApp sender makes one Twilio request per reply part, and httpx's default
transport (httpcore) was the largest single cost of a message in aftercall's process: its
pool passes over every pooled connection several times per request, asking each whether it
is idle or expired, so the cost grows with the connections kept, and its layers of streams,
locks and shields run again per request. Then httpx's own models were: building an
``httpx.Request`` (URL parsing, header normalisation) and an ``httpx.Response`` (decoding,
charset detection) cost more than the exchange itself. So the sender calls
`Http1Transport.request` with bytes and a `Target` parsed once, and gets an `Answer` back;
anything else can still use it as an httpx transport. ``python -m
benchmarks.http_transport`` measures it against httpx's default transport: 3x the client CPU
per request at one request in flight, 4.5x at the sender's 8, 11x at 32 (2026-12-04).

What it does:
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
responses, ``Expect: 100-continue``, upgrades.
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


@attrs.frozen
class Target:
    """Where a request goes, parsed once: the connection's origin, the request target and
    the ``Host`` header. A sender that calls one URL all day parses it once."""

    origin: Origin
    path: bytes
    host_header: bytes

    @classmethod
    def of(cls, url: str | httpx.URL) -> Target:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        if parsed.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"cannot send a request to {parsed.scheme!r} URLs")
        port = parsed.port or _default_port(parsed.scheme)
        host = parsed.raw_host
        default = parsed.port is None or parsed.port == _default_port(parsed.scheme)
        return cls(
            (parsed.raw_scheme, host, port),
            parsed.raw_path,
            host if default else host + b":" + str(port).encode(),
        )

    def with_query(self, query: bytes) -> Target:
        """The same place with ``?query`` (already encoded) instead of its own."""
        path = self.path.partition(b"?")[0]
        return attrs.evolve(self, path=path + b"?" + query if query else path)


@attrs.frozen
class Answer:
    """A whole response: status, headers (names in lower case, as h11 gives them), body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@attrs.define(eq=False)
class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over Trio sockets; see the module docstring for what it leaves out.

    `request` is the lean call (the WhatsApp sender's): bytes in, an `Answer` out, no
    httpx models on the way. As an httpx transport (``handle_async_request``) it serves
    anything that holds an ``httpx.Request``, through the same exchange.
    """

    ssl_context: ssl.SSLContext | None = None
    #: Idle connections kept per origin: as many as requests run at once, or connections
    #: are opened and closed again under load.
    max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN
    _idle: dict[Origin, list[_Connection]] = attrs.field(factory=dict, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    async def request(
        self,
        method: bytes,
        target: Target,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        answer_within: float | None = None,
        connect_within: float | None = None,
    ) -> Answer:
        """One exchange: ``headers`` without ``Host`` (the target brings it) and, for a
        body, with its ``Content-Length``.

        ``answer_within`` (seconds) bounds the exchange once connected: the request written
        and the whole answer read in that time (one deadline, not one per read: a deadline
        costs a cancel scope, and a server that trickles an answer is as stuck as a silent
        one). Raises httpx's errors: ``ConnectError``/``ConnectTimeout`` (never
        sent), ``WriteError``/``WriteTimeout``, ``ReadError``/``ReadTimeout`` and
        ``RemoteProtocolError`` (sent, no usable answer).
        """
        if self._closed:
            raise RuntimeError("this transport is closed")
        origin = target.origin
        connection = self._idle_connection(origin)
        if connection is None:
            connection = await self._connect(origin, connect_within)
        try:
            answer = await self._exchange(
                connection, method, target, [(b"host", target.host_header), *headers], body,
                answer_within,
            )  # fmt: skip
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
                return answer
        connection.discard()
        return answer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = request.headers.raw
        target = Target.of(request.url)
        host = next((value for name, value in raw if name.lower() == b"host"), None)
        if host is not None:
            target = attrs.evolve(target, host_header=host)
        timeouts = request.extensions.get("timeout", {})
        answer = await self.request(
            request.method.encode("ascii"),
            target,
            [(name, value) for name, value in raw if name.lower() != b"host"],
            await request.aread(),
            answer_within=_exchange_timeout(timeouts),
            connect_within=timeouts.get("connect"),
        )
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            content=answer.body,
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

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
        with _Deadline(seconds) as deadline:
            try:
                tcp = await trio.open_tcp_stream(hostname, port)
                stream: trio.abc.Stream = tcp
                if scheme == b"https":
                    context = self.ssl_context or _default_ssl_context()
                    tls = trio.SSLStream(
                        tcp, context, server_hostname=hostname, https_compatible=True
                    )
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        tcp.socket.close()
                        raise
                    stream = tls
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        if deadline.expired:
            raise httpx.ConnectTimeout(f"no connection within {seconds:g} s")
        return _Connection(stream, tcp.socket)

    # -- one exchange -----------------------------------------------------------------------
    async def _exchange(
        self,
        connection: _Connection,
        method: bytes,
        target: Target,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        seconds: float | None,
    ) -> Answer:
        conn = connection.h11
        try:
            data = conn.send(h11.Request(method=method, target=target.path, headers=headers))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        reading = False
        with _Deadline(seconds) as deadline:
            try:
                await connection.stream.send_all(data)
                reading = True
                status = 0
                response_headers: list[tuple[bytes, bytes]] = []
                chunks: list[bytes] = []
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        received = await connection.stream.receive_some(_READ_SIZE)
                        if not received and conn.their_state is h11.SEND_RESPONSE:
                            raise httpx.RemoteProtocolError(
                                "Server disconnected without sending a response."
                            )
                        conn.receive_data(bytes(received))
                    elif type(event) is h11.Response:
                        status = event.status_code
                        response_headers = list(event.headers)
                    elif type(event) is h11.Data:
                        chunks.append(bytes(event.data))
                    elif type(event) is h11.EndOfMessage:
                        break
                    elif type(event) is h11.InformationalResponse:
                        continue
                    else:  # PAUSED, ConnectionClosed
                        raise httpx.RemoteProtocolError(
                            "the server closed the connection mid-response"
                        )
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                error = httpx.ReadError if reading else httpx.WriteError
                raise error(str(exc) or type(exc).__name__) from exc
        if deadline.expired:
            error_type = httpx.ReadTimeout if reading else httpx.WriteTimeout
            raise error_type(f"no answer within {seconds:g} s")
        return Answer(status, response_headers, b"".join(chunks))


class _Deadline:
    """A `trio.CancelScope` with a deadline ``seconds`` from now (none for None), that
    says afterwards whether the deadline is what ended the block.

    A class rather than `trio.move_on_after` (itself a generator-based context manager):
    it wraps every request, and generator-based context managers cost several times as
    much.
    """

    __slots__ = ("_scope", "expired")

    def __init__(self, seconds: float | None) -> None:
        self._scope = (
            trio.CancelScope(deadline=trio.current_time() + seconds)
            if seconds is not None
            else None
        )
        self.expired = False

    def __enter__(self) -> _Deadline:
        if self._scope is not None:
            self._scope.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        scope = self._scope
        if scope is None:
            return False
        handled = scope.__exit__(kind, exc, tb)
        self.expired = scope.cancelled_caught
        return bool(handled)


def _exchange_timeout(timeouts: dict[str, float | None]) -> float | None:
    """httpx's per-phase timeouts as the one deadline of an exchange: the longer of the
    write and read ones; None (no deadline) if either is unbounded."""
    write, read = timeouts.get("write"), timeouts.get("read")
    return None if write is None or read is None else max(write, read)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


_SSL_CONTEXT: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    """One verified client context per process (making one costs milliseconds)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT
