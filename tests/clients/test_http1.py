"""The lean HTTP/1.1 transport against real sockets: reuse, expiry, and every way a server
can fail a request, each mapped to the httpx error that says whether it was sent."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import attrs
import httpx
import pytest
import trio
import trustme
from trio.testing import MockClock

from clients.http1 import KEEPALIVE_EXPIRY, Http1Transport, Target
from tests.watched import Watched

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'

Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]
Behaviour = Callable[[Stream, bytes], Awaitable[bool]]


@attrs.define(eq=False)
class Server(Watched):
    """Counts connections and requests; ``behaviour`` answers each request (False: close)."""

    behaviour: Behaviour
    url: str = ""
    connections: int = 0
    closed: int = 0  # connections the client hung up
    ended: int = 0  # connections over, whoever closed them
    requests: list[bytes] = attrs.Factory(list)


async def _read_request(stream: Stream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


@asynccontextmanager
async def serving(behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(behaviour)

    async def handle(stream: Stream) -> None:
        server.connections += 1
        server.changed()
        try:
            async with stream:
                while (request := await _read_request(stream)) is not None:
                    server.requests.append(request)
                    server.changed()
                    if not await server.behaviour(stream, request):
                        return
                server.closed += 1  # the client hung up
        except trio.BrokenResourceError:
            pass  # the client gave up first (or refused our certificate): nothing to answer
        finally:
            server.ended += 1
            server.changed()

    async with trio.open_nursery() as nursery:
        if tls is None:
            [listener] = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            server.url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        else:
            serve = partial(trio.serve_ssl_over_tcp, handle, 0, tls, host="127.0.0.1")
            [listener] = await nursery.start(serve)
            server.url = f"https://localhost:{listener.transport_listener.socket.getsockname()[1]}"
        yield server
        nursery.cancel_scope.cancel()


async def answer_ok(stream: Stream, request: bytes) -> bool:
    await stream.send_all(OK)
    return True


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Http1Transport(), timeout=httpx.Timeout(5.0))


async def test_requests_share_one_kept_alive_connection() -> None:
    async with serving(answer_ok) as server, client() as http:
        for i in range(3):
            response = await http.post(f"{server.url}/x", data={"Body": f"hello {i}"})
            assert (response.status_code, response.json()) == (200, {"ok": True})
    assert server.connections == 1
    assert [r.split(b"\r\n\r\n")[1] for r in server.requests] == [
        b"Body=hello+0",
        b"Body=hello+1",
        b"Body=hello+2",
    ]
    assert all(r.startswith(b"POST /x HTTP/1.1\r\n") for r in server.requests)


async def test_concurrent_requests_open_connections_and_keep_them() -> None:
    async def answer_when_four_wait(stream: Stream, request: bytes) -> bool:
        await server.wait_for(lambda: len(server.requests) >= 4)
        return await answer_ok(stream, request)

    async with serving(answer_when_four_wait) as server, client() as http:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(http.get, server.url)
        assert server.connections == 4
        await http.get(server.url)  # an idle one is reused
        assert server.connections == 4


async def test_an_idle_connection_the_server_closed_is_not_used() -> None:
    async def answer_then_close(stream: Stream, request: bytes) -> bool:
        await stream.send_all(OK)
        return False  # closes without saying so (no Connection: close)

    async with serving(answer_then_close) as server, client() as http:
        assert (await http.get(server.url)).status_code == 200
        await server.wait_for(lambda: server.ended == 1)  # closed: its FIN is on its way
        assert (await http.get(server.url)).status_code == 200
    assert server.connections == 2


async def test_an_expired_idle_connection_is_replaced(autojump_clock: MockClock) -> None:
    async with serving(answer_ok) as server, client() as http:
        await http.get(server.url)
        await trio.sleep(KEEPALIVE_EXPIRY + 1)
        await http.get(server.url)
    assert server.connections == 2


async def test_connection_close_is_honoured() -> None:
    async def close_said(stream: Stream, request: bytes) -> bool:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        )
        return True  # the server would take another; the client must not offer it

    async with serving(close_said) as server, client() as http:
        assert (await http.get(server.url)).text == "ok"
        assert (await http.get(server.url)).text == "ok"
    assert server.connections == 2


async def test_a_refused_connection_is_a_connect_error() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_a_close_without_an_answer_is_a_remote_protocol_error() -> None:
    """The request went out and nothing came back: the caller must treat it as maybe sent."""

    async def hang_up(stream: Stream, request: bytes) -> bool:
        return False

    async with serving(hang_up) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await http.post(server.url, data={"Body": "hi"})
    assert len(server.requests) == 1


async def test_a_silent_server_is_a_read_timeout_and_the_connection_is_dropped(
    autojump_clock: MockClock,
) -> None:
    answers = iter([False, True])

    async def stall_once(stream: Stream, request: bytes) -> bool:
        if not next(answers):
            await trio.sleep_forever()  # never answers
        return await answer_ok(stream, request)

    async with serving(stall_once) as server, client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(server.url, data={"Body": "hi"}, timeout=2)
        assert (await http.get(server.url)).status_code == 200
    assert server.connections == 2


async def test_an_answer_trickling_in_past_its_deadline_is_a_read_timeout(
    autojump_clock: MockClock,
) -> None:
    """One deadline for the whole exchange: each byte comes well within the time allowed,
    the answer as a whole does not."""

    slow = iter([True, False])

    async def trickle_once(stream: Stream, request: bytes) -> bool:
        if not next(slow):
            return await answer_ok(stream, request)
        for byte in OK:
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.5)
        return True

    async with serving(trickle_once) as server, Http1Transport() as transport:
        target = Target.of(server.url)
        with pytest.raises(httpx.ReadTimeout):
            await transport.request(b"GET", target, [], answer_within=5)
        assert (await transport.request(b"GET", target, [], answer_within=5)).status == 200
    assert server.connections == 2  # the interrupted connection was not used again


async def test_the_lean_request_answers_status_headers_and_body() -> None:
    async with serving(answer_ok) as server, Http1Transport() as transport:
        target = Target.of(server.url + "/somewhere?x=1")
        answer = await transport.request(
            b"POST", target, [(b"content-length", b"2")], b"hi", answer_within=5
        )
        again = await transport.request(b"GET", target.with_query(b"y=2"), [], answer_within=5)
    assert (answer.status, answer.body) == (200, b'{"ok":true}')
    assert answer.header(b"content-type") == b"application/json"
    assert answer.header(b"missing") is None
    assert again.status == 200
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /somewhere?x=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert server.requests[0].endswith(b"\r\n\r\nhi")
    assert server.requests[1].startswith(b"GET /somewhere?y=2 HTTP/1.1\r\n")


async def test_garbage_is_a_remote_protocol_error() -> None:
    async def garbage(stream: Stream, request: bytes) -> bool:
        await stream.send_all(b"this is not HTTP\r\n\r\n")
        return True

    async with serving(garbage) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url)


async def test_a_cancelled_request_leaves_no_connection_behind() -> None:
    release = trio.Event()

    async def hold_the_first(stream: Stream, request: bytes) -> bool:
        if len(server.requests) == 1:
            await release.wait()
            return False
        return await answer_ok(stream, request)

    async with serving(hold_the_first) as server, client() as http:
        with trio.CancelScope() as waiting:

            async def give_up_once_received() -> None:
                await server.wait_for(lambda: len(server.requests) == 1)
                waiting.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(give_up_once_received)
                await http.get(server.url)
        release.set()
        assert (await http.get(server.url)).status_code == 200
    assert server.connections == 2  # the interrupted one was closed, not reused


async def test_closing_under_cancellation_closes_every_idle_connection() -> None:
    """The service closes its client while being cancelled: no socket may be left open."""

    async def answer_when_three_wait(stream: Stream, request: bytes) -> bool:
        await server.wait_for(lambda: len(server.requests) >= 3)
        return await answer_ok(stream, request)

    async with serving(answer_when_three_wait) as server:
        http = client()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(http.get, server.url)
        with trio.CancelScope() as scope:
            scope.cancel()
            await http.aclose()
        with trio.fail_after(5):
            await server.wait_for(lambda: server.closed == 3)
    assert (server.connections, server.closed) == (3, 3)


async def test_https_verifies_the_server_and_keeps_the_connection() -> None:
    """Twilio is https: the certificate is checked against the host name, and the TLS
    connection is kept alive like any other."""
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    async with serving(answer_ok, tls=server_tls) as server:
        async with httpx.AsyncClient(transport=Http1Transport(ssl_context=trusting)) as http:
            for _ in range(2):
                assert (await http.post(server.url, data={"Body": "hi"})).json() == {"ok": True}
        assert server.connections == 1
        # A client that does not trust the authority refuses the server before sending.
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(server.url)
        await server.wait_for(lambda: server.ended == 2)
    assert len(server.requests) == 2


async def test_only_http_and_https() -> None:
    async with client() as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")
