"""A small app that stands where aftercall's webhook would, catching what the stand-in posts.

The Twilio tests import ``serve_receiver`` from here (pytest collects this module too; the
one test at the bottom checks the receiver itself).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio

from web.serving import serve_asgi

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


@attrs.frozen
class Caught:
    """One request the receiver got: the URL as requested, headers, form fields."""

    url: str
    path: str
    headers: dict[str, str]
    form: tuple[tuple[str, str], ...]

    @property
    def params(self) -> dict[str, str]:
        return dict(self.form)


@attrs.frozen
class Answer:
    status: int = 200
    body: str = EMPTY_TWIML
    content_type: str | None = "text/xml"
    delay: float = 0.0


@attrs.define
class Receiver:
    base_url: str
    answers: dict[str, Answer]
    caught: list[Caught]
    _arrivals: trio.MemoryReceiveChannel[Caught]

    def url(self, path: str) -> str:
        return self.base_url + path

    def answer(self, path: str, answer: Answer) -> None:
        self.answers[path] = answer

    async def next(self) -> Caught:
        return await self._arrivals.receive()


@asynccontextmanager
async def serve_receiver() -> AsyncIterator[Receiver]:
    send, receive = trio.open_memory_channel[Caught](1000)
    answers: dict[str, Answer] = {}
    caught: list[Caught] = []
    app = QuartTrio("receiver")

    @app.post("/<path:path>")
    async def catch(path: str) -> Response:
        form = await request.form
        item = Caught(
            url=request.url,
            path="/" + path,
            headers={name.lower(): value for name, value in request.headers.items()},
            form=tuple(form.items(multi=True)),
        )
        caught.append(item)
        send.send_nowait(item)
        answer = answers.get(item.path, Answer())
        if answer.delay:
            await trio.sleep(answer.delay)
        response = Response(answer.body, status=answer.status)
        if answer.content_type is None:
            del response.headers["Content-Type"]
        else:
            response.headers["Content-Type"] = answer.content_type
        return response

    async with serve_asgi(app) as base_url:
        yield Receiver(base_url, answers, caught, receive)


async def test_receiver_catches_a_form_post() -> None:
    with trio.fail_after(10):
        async with serve_receiver() as receiver, httpx.AsyncClient() as http:
            response = await http.post(receiver.url("/hook?x=1"), data={"A": "1", "B": "2"})
            caught = await receiver.next()
    assert response.status_code == 200
    assert caught.url == receiver.url("/hook?x=1")
    assert caught.params == {"A": "1", "B": "2"}
