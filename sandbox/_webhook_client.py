"""The stand-ins' HTTP/1.1 client for webhooks: h11 over Trio streams, kept-alive connections.

The Twilio stand-in posts a webhook for every simulated message and a status callback for
every delivery step; in the conversation benchmark that is most of what the stand-ins do.
Through httpx that cost 0.6-0.8 ms of CPU per webhook (httpcore writes the headers and the
body in separate sends and walks its pool on every request); this client writes each
request in one send and keeps a plain stack of idle connections per origin, for about a
third of that (``benchmarks/standin_webhooks.py`` compares the two in one run).

It is the sandbox's own: the stand-ins play the outside world, so they share no code with
aftercall's HTTP client (``clients/http1.py``), and a bug in one cannot hide on both ends of
an end-to-end test. It does only what a webhook sender needs: POST a body, read the whole
answer, one deadline for the exchange.
"""

from __future__ import annotations

import functools
import select
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import attrs
import h11
import trio

#: Bytes read from the socket at a time.
READ_SIZE = 64 * 1024
#: An answer larger than this is not a webhook answer (TwiML is a few hundred bytes).
MAX_ANSWER = 1024 * 1024


class WebhookConnectError(Exception):
    """The app could not be reached: nothing was sent (Twilio retries these once)."""


class WebhookTimeout(Exception):
    """The app did not answer the whole request within the deadline."""


class WebhookTransportError(Exception):
    """The connection broke or the answer was not HTTP/1.1 (after the request went out)."""


@attrs.frozen
class Answer:
    """An answer, read to its end."""

    status: int
    content_type: str | None
    body: bytes


@attrs.frozen
class _Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@attrs.define(eq=False)
class _Connection:
    stream: trio.abc.Stream
    h11: h11.Connection
    idle_since: float = 0.0

    def looks_closed(self) -> bool:
        """Whether the peer already closed this idle connection (readable at EOF).

        Only plain sockets are checked (a poll without blocking); a TLS connection is
        trusted until its keep-alive expiry.
        """
        if not isinstance(self.stream, trio.SocketStream):
            return False
        # Readable while idle means EOF, or bytes that answer nothing: not reusable either way.
        readable, _, _ = select.select([self.stream.socket.fileno()], [], [], 0)
        return bool(readable)


@attrs.define(eq=False)
class WebhookClient:
    """Kept-alive connections to the apps the stand-in calls, each lent to one request.

    ``keepalive_expiry``: an idle connection older than this is closed, not reused (servers
    drop idle connections after a few seconds; Hypercorn's default is 5 s).
    """

    connect_timeout: float = 5.0
    keepalive_expiry: float = 5.0
    _idle: dict[_Origin, list[_Connection]] = attrs.field(factory=dict, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, answer_within: float
    ) -> Answer:
        """POST ``body`` to ``url`` and read the whole answer within ``answer_within`` seconds
        from the request's first byte (connecting has ``connect_timeout`` of its own).

        Raises:
            WebhookConnectError, WebhookTimeout, WebhookTransportError.
        """
        if self._closed:
            raise WebhookTransportError("the client is closed")
        origin, target = _split(url)
        fields = [
            ("host", origin.host_header),
            *headers.items(),
            ("content-length", str(len(body))),
        ]
        request = h11.Request(method="POST", target=target, headers=fields)
        # A kept-alive connection the server closed in the meantime fails before any answer
        # byte; such a request is sent again once on a new connection.
        for reused in (True, False):
            connection = self._take_idle(origin) if reused else None
            if reused and connection is None:
                continue
            if connection is None:
                connection = await self._connect(origin)
            try:
                with trio.fail_after(answer_within):
                    answer, reusable = await _exchange(connection, request, body)
            except trio.TooSlowError:
                await trio.aclose_forcefully(connection.stream)
                raise WebhookTimeout(f"no answer within {answer_within:g} s") from None
            except _Stale:
                await trio.aclose_forcefully(connection.stream)
                if reused:
                    continue
                raise WebhookTransportError(
                    "the app closed the connection without answering"
                ) from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
                await trio.aclose_forcefully(connection.stream)
                raise WebhookTransportError(f"the exchange broke: {exc!r}") from exc
            except BaseException:
                await trio.aclose_forcefully(connection.stream)
                raise
            if reusable and not self._closed:
                connection.idle_since = trio.current_time()
                self._idle.setdefault(origin, []).append(connection)
            else:
                await trio.aclose_forcefully(connection.stream)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            connection = idle.pop()  # the most recently used: the warmest, the least stale
            if (
                now - connection.idle_since < self.keepalive_expiry
                and not connection.looks_closed()
            ):
                return connection
            _close_now(connection)
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        try:
            with trio.fail_after(self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(origin.host, origin.port)
                if origin.scheme == "https":
                    tls = trio.SSLStream(stream, _tls_context(), server_hostname=origin.host)
                    await tls.do_handshake()
                    stream = tls
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            raise WebhookConnectError(f"cannot reach {origin.host}:{origin.port}: {exc!r}") from exc
        return _Connection(stream, h11.Connection(h11.CLIENT, max_incomplete_event_size=READ_SIZE))

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        # Shielded: closing local sockets does not block, and an interrupted close would
        # leave the other connections open.
        with trio.CancelScope(shield=True):
            for connections in idle.values():
                for connection in connections:
                    await trio.aclose_forcefully(connection.stream)

    async def __aenter__(self) -> WebhookClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Stale(Exception):
    """The connection ended before any byte of an answer."""


async def _exchange(
    connection: _Connection, request: h11.Request, body: bytes
) -> tuple[Answer, bool]:
    """Send the whole request in one write, read the whole answer; (answer, reusable)."""
    conn = connection.h11
    wire = b"".join(
        conn.send(event) or b"" for event in (request, h11.Data(data=body), h11.EndOfMessage())
    )
    try:
        await connection.stream.send_all(wire)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise _Stale() from None
    status = 0
    content_type: str | None = None
    chunks: list[bytes] = []
    size = 0
    got_bytes = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await connection.stream.receive_some(READ_SIZE)
            except trio.BrokenResourceError:
                if not got_bytes:
                    raise _Stale() from None
                raise
            if not data and not got_bytes:
                raise _Stale()
            got_bytes = True
            conn.receive_data(bytes(data))
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            status = event.status_code
            for name, value in event.headers:
                if name == b"content-type":
                    content_type = value.decode("latin-1")
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_ANSWER:
                raise h11.RemoteProtocolError(f"an answer of more than {MAX_ANSWER} bytes")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise trio.BrokenResourceError("the app closed the connection mid-answer")
        else:  # pragma: no cover - h11 yields nothing else to a client
            raise h11.RemoteProtocolError(f"unexpected {event!r}")
    answer = Answer(status, content_type, b"".join(chunks))
    reusable = conn.our_state is h11.DONE and conn.their_state is h11.DONE
    if reusable:
        conn.start_next_cycle()
    return answer, reusable


def _close_now(connection: _Connection) -> None:
    """Close an idle connection without waiting (no TLS goodbye: the peer has gone)."""
    if isinstance(connection.stream, trio.SocketStream):
        connection.stream.socket.close()
    elif isinstance(connection.stream, trio.SSLStream) and isinstance(
        connection.stream.transport_stream, trio.SocketStream
    ):
        connection.stream.transport_stream.socket.close()


def _split(url: str) -> tuple[_Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookConnectError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return _Origin(parts.scheme, parts.hostname, port), target


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for the process, with the system's certificates; built on
    first use, as building one takes ~20 ms."""
    return ssl.create_default_context()
