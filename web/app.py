"""The HTTP face of aftercall: ``hypercorn -k trio web.app:app``.

Handlers validate, append to the log, tell an actor, answer. They never wait for the agent:
Twilio gives a webhook 15 s, an agent turn may take longer, and an acknowledged message is
already durable in the log (invariant 1), so the answer can go at once.

The whole system (event store, actors, HTTP clients, the sandbox stand-ins when asked for)
is built from settings by ``aftercall.system.run_system`` in one owner task that
``before_serving`` starts in the app's nursery; ``after_serving`` stops it. Nothing is
built at import time: importing this module has no side effects beyond defining routes.

The wrong worker is caught at start-up: plain ``hypercorn web.app:app`` picks the asyncio
worker, where nothing here can work, so the lifespan fails with one line naming the command.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import sniffio
import trio
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from aftercall.system import System, run_system
from events.store import EventStoreError, StoreUnavailable
from web import routes

RIGHT_COMMAND = "aftercall needs the trio worker: run: hypercorn -k trio web.app:app"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def create_app(system_factory: Callable[..., Awaitable[None]] = run_system) -> QuartTrio:
    """The Quart-Trio app; ``system_factory`` is how tests inject settings."""
    app = QuartTrio("aftercall")
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024  # Twilio forms are small; refuse floods
    holder: dict[str, Any] = {}

    @app.before_serving
    async def start_system() -> None:
        stop = trio.Event()
        holder["stop"] = stop
        holder["system"] = await app.nursery.start(system_factory, stop)
        app.config["AFTERCALL_SYSTEM"] = holder["system"]

    @app.after_serving
    async def stop_system() -> None:
        stop: trio.Event | None = holder.get("stop")
        if stop is not None:
            stop.set()

    @app.errorhandler(EventStoreError)
    async def store_error(error: EventStoreError) -> tuple[dict[str, str], int]:
        # Not durable, so not acknowledged: Twilio / ElevenLabs will deliver again.
        status = 503 if isinstance(error, StoreUnavailable) else 400
        return {"error": str(error)}, status

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> tuple[dict[str, str], int]:
        return {"error": error.description or error.name}, error.code or 400

    routes.register(app)
    return app


def current_system() -> System:
    from quart import current_app

    system: System | None = current_app.config.get("AFTERCALL_SYSTEM")
    if system is None:  # pragma: no cover - only between lifespan phases
        raise StoreUnavailable("aftercall is starting")
    return system


class TrioOnly:
    """ASGI wrapper: under any event loop but Trio, fail the lifespan with the right command."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = "unknown"
        if library != "trio":
            if scope["type"] == "lifespan":
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.failed", "message": RIGHT_COMMAND})
                return
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": RIGHT_COMMAND.encode()})
            return
        await self.app(scope, receive, send)


quart_app = create_app()
app = TrioOnly(quart_app)
