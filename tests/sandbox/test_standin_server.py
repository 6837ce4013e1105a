"""The stand-ins' own ASGI server, over real loopback sockets.

The stand-ins' suites exercise it with the real apps (and the official SDKs); these tests
pin the server's own behaviour: keep-alive, bodies both ways, what a failing app gets,
the dropped connection, the WebSocket life cycle and the lifespan. Raw sockets where the
bytes on the wire are the point, httpx and trio-websocket where a real client is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from quart import Response, request, websocket
from quart_trio import QuartTrio
from trio_websocket import ConnectionClosed

from sandbox._standin_server import DROP, MAX_BODY, serve_standin
from tests.sandbox.test_elevenlabs_ws import open_ws, refused_handshake

Scope = dict[str, Any]


def quart_app(started: list[str] | None = None) -> QuartTrio:
    app = QuartTrio("standin_server_test")

    @app.before_serving
    async def up() -> None:
        if started is not None:
            started.append("up")

    @app.after_serving
    async def down() -> None:
        if started is not None:
            started.append("down")

    @app.post("/echo")
    async def echo() -> Response:
        body = await request.get_data()
        return Response(body, status=201, headers={"X-Length": str(len(body))})

    @app.get("/stream")
    async def stream() -> Any:
        async def parts() -> AsyncIterator[bytes]:
            for part in (b"one ", b"two ", b"three"):
                yield part

        return parts()

    @app.get("/fail")
    async def fail() -> Response:
        raise RuntimeError("the app broke")

    @app.websocket("/ws")
    async def echo_socket() -> Response | None:
        if websocket.args.get("refuse"):
            return Response("not today", status=429)
        if websocket.args.get("silent"):
            return None  # neither accepted nor refused: the server answers 500
        if websocket.args.get("bad_subprotocol"):
            await websocket.accept(subprotocol="not-offered")
        await websocket.accept(
            subprotocol="convai" if "convai" in websocket.requested_subprotocols else None
        )
        while True:
            message = await websocket.receive()
            assert isinstance(message, str)
            if message == "close":
                await websocket.close(4001, "asked to")
                return None
            if message == "fail":
                raise RuntimeError("the socket broke")
            await websocket.send(f"echo {message}")

    return app


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    with trio.fail_after(10):
        async with serve_standin(app) as url:
            yield url


async def raw_exchange(url: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(data)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


async def test_requests_share_a_kept_alive_connection() -> None:
    async with serving(quart_app()) as url, httpx.AsyncClient() as http:
        first = await http.post(f"{url}/echo", content=b"hello")
        second = await http.post(f"{url}/echo", content=b"again")
    assert (first.status_code, first.content, first.headers["x-length"]) == (201, b"hello", "5")
    assert second.content == b"again"
    assert first.headers["content-length"] == "5"


async def test_a_chunked_request_body_and_a_streamed_answer() -> None:
    async with serving(quart_app()) as url:

        async def body() -> AsyncIterator[bytes]:
            yield b"in "
            yield b"pieces"

        async with httpx.AsyncClient() as http:
            echoed = await http.post(f"{url}/echo", content=body())
            streamed = await http.get(f"{url}/stream")
    assert echoed.content == b"in pieces"
    assert streamed.content == b"one two three"
    assert streamed.headers.get("transfer-encoding") == "chunked"


async def test_a_failing_app_answers_500_and_the_server_goes_on() -> None:
    async with serving(quart_app()) as url, httpx.AsyncClient() as http:
        failed = await http.get(f"{url}/fail")
        after = await http.post(f"{url}/echo", content=b"still here")
    assert failed.status_code == 500
    assert after.content == b"still here"


async def test_an_app_that_raises_before_answering_gets_a_500_from_the_server() -> None:
    async def broken(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise RuntimeError("no answer from me")

    async with serving(broken) as url:
        answer = await raw_exchange(url, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ")


async def test_garbage_gets_a_400_and_the_connection_is_closed() -> None:
    async with serving(quart_app()) as url:
        answer = await raw_exchange(url, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_a_body_past_the_limit_is_refused_with_413() -> None:
    async with serving(quart_app()) as url:
        head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
        host, port = url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(head.encode())
            chunk = b"x" * 65536
            answer = b""
            with trio.move_on_after(5):
                for _ in range(MAX_BODY // len(chunk) + 2):
                    try:
                        await stream.send_all(chunk)
                    except trio.BrokenResourceError:
                        break
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                answer += data
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_the_drop_extension_closes_without_an_answer() -> None:
    async def dropping(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            assert DROP in scope["extensions"]
            await receive()
            await send({"type": DROP})

    async with serving(dropping) as url, httpx.AsyncClient() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"{url}/anything")


async def test_the_lifespan_runs_around_serving() -> None:
    started: list[str] = []
    async with serving(quart_app(started)):
        assert started == ["up"]
    assert started == ["up", "down"]


async def test_an_app_without_a_lifespan_is_served() -> None:
    async def plain(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("only http")
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serving(plain) as url, httpx.AsyncClient() as http:
        answer = await http.get(url)
    assert answer.status_code == 204


async def test_a_websocket_talks_and_its_close_code_reaches_the_client() -> None:
    async with serving(quart_app()) as url:
        ws_url = url.replace("http", "ws", 1) + "/ws"
        async with open_ws(ws_url, subprotocols=["convai"]) as ws:
            assert ws.subprotocol == "convai"
            await ws.send_message("hi")
            assert await ws.get_message() == "echo hi"
            await ws.send_message("close")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (4001, "asked to")


async def test_a_websocket_app_that_fails_is_closed() -> None:
    """Quart closes its own failed handler with 1000; a bare ASGI app's failure is 1011."""

    async def broken(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise ValueError("websockets only")
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise RuntimeError("the socket broke")

    async with serving(quart_app()) as url:
        ws_url = url.replace("http", "ws", 1) + "/ws"
        async with open_ws(ws_url) as ws:
            await ws.send_message("fail")
            with pytest.raises(ConnectionClosed) as by_quart:
                await ws.get_message()
    async with serving(broken) as url, open_ws(url.replace("http", "ws", 1)) as ws:
        await ws.send_message("anything")
        with pytest.raises(ConnectionClosed) as by_server:
            await ws.get_message()
    assert by_quart.value.reason is not None
    assert by_quart.value.reason.code == 1000
    assert by_server.value.reason is not None
    assert by_server.value.reason.code == 1011


async def test_accepting_a_subprotocol_the_client_did_not_offer_refuses_the_handshake() -> None:
    """The accept fails in the app; Quart, counting itself accepted already, then closes,
    which before a handshake is a 403. What matters: no 101, and no hang."""
    async with serving(quart_app()) as url:
        refused = await refused_handshake(url.replace("http", "ws", 1) + "/ws?bad_subprotocol=1")
    assert refused.status_code == 403


async def test_a_refused_handshake_carries_the_apps_own_response() -> None:
    async with serving(quart_app()) as url:
        ws_url = url.replace("http", "ws", 1)
        refused = await refused_handshake(ws_url + "/ws?refuse=1")
        unanswered = await refused_handshake(ws_url + "/ws?silent=1")
    assert refused.status_code == 429
    assert refused.body == b"not today"
    assert unanswered.status_code == 500


async def test_a_client_that_closes_is_a_disconnect_with_its_code() -> None:
    seen: list[dict[str, Any]] = []
    done = trio.Event()

    async def recorder(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            raise ValueError("websockets only")
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "websocket.disconnect":
                done.set()
                return

    async with serving(recorder) as url:
        async with open_ws(url.replace("http", "ws", 1) + "/x") as ws:
            await ws.send_message(b"\x00\x01")
            await ws.aclose(4321, "bye")
        await done.wait()
    assert seen == [
        {"type": "websocket.receive", "bytes": b"\x00\x01"},
        {"type": "websocket.disconnect", "code": 4321},
    ]
