"""The app factory of aftercall's HTTP face (``web.app`` is the entry Hypercorn names).

Handlers validate, append to the log, tell an actor, answer. They never wait for the agent:
Twilio gives a webhook 15 s, an agent turn may take longer, and an acknowledged message is
already durable in the log (ARCHITECTURE.md, invariant 1), so the answer can go at once.

The whole system (event store, actors, HTTP clients, the sandbox stand-ins when asked for)
is built by the ``system_factory`` given to `create_app` (``aftercall.system.run_system``)
in one owner task that ``before_serving`` starts in the app's nursery; ``after_serving``
stops it. The handlers reach it through ``web.context.current_system``.

The wrong worker is caught at start-up: plain ``hypercorn web.app:app`` picks the asyncio
worker, where nothing here can work, so the lifespan fails with one line naming the command.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import sniffio
import trio
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors.groups import lone_leaf
from events.store import EventStoreError, StoreUnavailable
from web.api import api
from web.body_limits import BODY_LIMITS, BodyLimits
from web.console.views import console
from web.context import SYSTEM_KEY
from web.health import health
from web.hypercorn_fixes import serialise_closes
from web.post_call import post_call_webhook
from web.webhooks import webhooks

RIGHT_COMMAND = "aftercall needs the trio worker: run: hypercorn -k trio web.app:app"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AftercallApp(QuartTrio):
    """Quart-Trio, with start-up errors a person can fix kept to their one-line message."""

    #: Errors whose message says all (missing settings, the database down): TrioOnly
    #: prints the message; a traceback would only hide it.
    quiet_errors: tuple[type[BaseException], ...] = (EventStoreError,)

    def log_exception(self, exception_info: Any) -> None:
        if isinstance(exception_info[1], self.quiet_errors):
            return
        super().log_exception(exception_info)


def create_app(
    system_factory: Callable[..., Awaitable[None]],
    *,
    quiet_errors: tuple[type[BaseException], ...] = (),
    freeze_heap: bool = False,
) -> QuartTrio:
    """The Quart-Trio app around the system ``system_factory`` runs.

    ``system_factory(stop, task_status=...)`` builds the system, reports it with
    ``task_status.started(system)`` and runs until ``stop`` is set (tests inject their
    settings and store through it). ``quiet_errors``: start-up errors shown as their
    message alone.

    ``freeze_heap`` (the deployed app): once the system is up, everything built so far
    (modules, classes, the system) is moved out of the cycle collector's sight with
    ``gc.freeze()``. A full collection otherwise walks those few hundred thousand objects
    and stops every conversation for it: measured 80-180 ms pauses under load, the largest
    single source of tail latency. Tests keep it off: freezing is process-wide, and a
    test process builds and drops many systems.
    """
    serialise_closes()
    app = AftercallApp("aftercall")
    app.quiet_errors = (EventStoreError, *quiet_errors)
    # Body limits by path, for every transfer encoding, and the body always read
    # (web.body_limits); Quart's own limit is only the backstop.
    app.config["MAX_CONTENT_LENGTH"] = max(rule.limit for rule in BODY_LIMITS)
    app.asgi_app = cast(Any, BodyLimits(cast(Any, app.asgi_app)))  # type: ignore[method-assign]
    holder: dict[str, Any] = {}

    @app.before_serving
    async def start_system() -> None:
        stop = trio.Event()
        holder["stop"] = stop
        try:
            holder["system"] = await app.nursery.start(system_factory, stop)
        except BaseExceptionGroup as group:
            leaf = lone_leaf(group)  # the one reason, out of the nurseries it crossed
            if leaf is None:
                raise
            raise leaf from None
        app.config[SYSTEM_KEY] = holder["system"]
        if freeze_heap:
            gc.collect()
            gc.freeze()

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

    for blueprint in (health, webhooks, post_call_webhook, api, console):
        app.register_blueprint(blueprint)
    return app


class TrioOnly:
    """ASGI wrapper for start-up problems a person must fix: one line, not a traceback.

    Under any event loop but Trio (plain ``hypercorn web.app:app``) the lifespan fails with
    the right command. When the system cannot start (missing settings, the database down),
    the reason is printed as one line. With ``exit_on_failure`` (the deployed ``app``) the
    worker process then exits with status 2 instead of dying in a traceback; tests keep it
    off and see the failure as an exception.
    """

    def __init__(self, app: Any, *, exit_on_failure: bool = False) -> None:
        self.app = app
        self.exit_on_failure = exit_on_failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = "unknown"
        if library != "trio":
            if scope["type"] == "lifespan":
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._fail(RIGHT_COMMAND)
                    await send({"type": "lifespan.startup.failed", "message": RIGHT_COMMAND})
                return
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": RIGHT_COMMAND.encode()})
            return
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watch(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":
                self._fail(str(message.get("message") or "start-up failed"))
            await send(message)

        await self.app(scope, receive, watch)

    def _fail(self, reason: str) -> None:
        print(f"aftercall: {reason}", file=sys.stderr, flush=True)
        if self.exit_on_failure:
            os._exit(2)
