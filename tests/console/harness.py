"""The real app with the console, on a real socket, in sandbox mode, and an HTTP client
that signs in as a browser would (the browser tests use `tests.console.browser`).

``running_console`` serves ``web.app``'s app as ``aftercall serve --sandbox`` does: the
composition root starts the ElevenLabs and Twilio stand-ins in-process, so the console's
phone panel and every webhook go through the real wire protocols. An operator is added
with a cheap argon2 (the default's ~0.3 s a sign-in adds up over a suite; the default
itself is tested in test_accounts).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import argon2
import attrs
import httpx
import trio

from aftercall.serve import run_sandbox_system
from aftercall.settings import SettingsError
from aftercall.system import System
from events.store import EventStore, RecordedEvent
from sandbox.environment import free_port
from web.factory import TrioOnly, create_app
from web.serving import serve_asgi

OPERATOR = "ana"
PASSWORD = "correct horse battery staple"
FAST_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


@attrs.define
class Console:
    url: str
    system: System
    store: EventStore
    banner: list[str]
    app: Any

    @property
    def console_url(self) -> str:
        return f"{self.url}/console"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=15, **kwargs)

    async def signed_in(
        self, client: httpx.AsyncClient, name: str = OPERATOR, password: str = PASSWORD
    ) -> str:
        """Sign ``client`` in; returns the session's CSRF token (from the overview)."""
        form = await client.get("/console/sign-in")
        assert form.status_code == 200, form.text
        answer = await client.post(
            "/console/sign-in",
            data={"name": name, "password": password, "csrf": csrf_of(form.text), "next": ""},
        )
        assert answer.status_code == 303, answer.text
        page = await client.get("/console")
        assert page.status_code == 200, page.text
        return csrf_of(page.text)

    async def wait_for(
        self, predicate: Callable[[RecordedEvent], bool], *, within: float = 20, count: int = 1
    ) -> RecordedEvent:
        """The ``count``-th event in the log that matches, once it is there."""
        position = 0
        seen = 0
        with trio.fail_after(within):
            while True:
                batch = await self.store.read_all(after=position, limit=1000)
                for record in batch:
                    if predicate(record):
                        seen += 1
                        if seen == count:
                            return record
                if batch:
                    position = batch[-1].position
                else:
                    await self.store.wait_for_events(position)

    async def projected(self) -> None:
        """Until every read model has folded the whole log as it is now."""
        runner = self.system.projections
        assert runner is not None
        head = await self.store.head()
        with trio.fail_after(20):
            await runner.wait_until(head)


@attrs.define
class EventStream:
    """A Server-Sent Events stream read off a plain socket.

    Not httpx: breaking out of its line iterator leaves the generators it nests (httpx's,
    httpcore's) to the garbage collector, which the suite's warnings filter turns into a
    failure. Reading the chunks here keeps the test to one connection it closes itself.
    """

    stream: trio.SocketStream
    buffer: bytearray = attrs.Factory(bytearray)

    async def until(self, needle: str, *, within: float = 10) -> None:
        """Read until ``needle`` (UTF-8) has come, or fail after ``within`` seconds."""
        wanted = needle.encode()
        with trio.fail_after(within):
            while wanted not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError(f"the stream ended before {needle!r}")
                self.buffer += chunk
        del self.buffer[: self.buffer.index(wanted) + len(wanted)]


@asynccontextmanager
async def event_stream(
    base_url: str, path: str, cookies: httpx.Cookies
) -> AsyncIterator[EventStream]:
    """GET ``path`` as an EventSource does, with the client's cookies."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        f"Cookie: {cookie}\r\nCache-Control: no-cache\r\n\r\n"
    )
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request.encode())
        reader = EventStream(stream)
        await reader.until("\r\n\r\n")  # the response's head
        yield reader


@asynccontextmanager
async def running_console(
    store: EventStore, data_dir: Path, *, env: dict[str, str] | None = None
) -> AsyncIterator[Console]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    environ = {
        "AFTERCALL_SANDBOX": "1",
        "PUBLIC_BASE_URL": public,
        "AFTERCALL_DATA_DIR": str(data_dir),
        "AFTERCALL_TURN_TIMEOUT": "5",
        **(env or {}),
    }
    banner: list[str] = []
    app = create_app(
        partial(run_sandbox_system, environ=environ, store=store, say=banner.append),
        quiet_errors=(SettingsError,),
    )
    async with serve_asgi(TrioOnly(app), port=port) as url:
        system: System = app.config["AFTERCALL_SYSTEM"]
        system.operators.hasher = FAST_HASHER
        if await system.operators.exists(OPERATOR):  # a second run on the same log
            await system.operators.set_password(OPERATOR, PASSWORD, by="test")
        else:
            await system.operators.add(OPERATOR, PASSWORD, by="test")
        yield Console(url, system, store, banner, app)
