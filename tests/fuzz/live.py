"""The real aftercall, served by Hypercorn on 127.0.0.1 from a thread of its own.

Hypothesis drives plain (sync) test functions, so the server cannot live in the test's
Trio loop: `LiveAftercall.start` runs ``trio.run`` in a background thread with the whole
system in it (a PostgreSQL store on a private schema, the ElevenLabs and Twilio stand-ins,
``web.factory.create_app`` around ``aftercall.system.run_system``, served by
``web.serving.serve_asgi``), and the tests talk to it over real sockets. When a test
needs the store or the projection runner it calls into that loop with `LiveAftercall.call`
(``trio.from_thread.run``).

Everything the server logs at WARNING or above is kept (`ServerLog`), tracebacks included,
so a failing example can be reported with what the server said about it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from aftercall.settings import SettingsError
from aftercall.system import System, run_system
from events.postgres import open_postgres_store
from events.postgres_bridge import PostgresOptions
from events.store import EventStore
from sandbox.elevenlabs import ElevenLabsStandIn, serve_elevenlabs
from sandbox.environment import free_port, stand_in_environment
from sandbox.twilio import TwilioStandIn, serve_twilio
from web.factory import TrioOnly, create_app
from web.serving import serve_asgi

T = TypeVar("T")

ADMIN_TOKEN = "fuzz-admin-token-0123456789"
WEBHOOK_SECRET = "wsec_fuzz_0123456789abcdef"
#: How long the server may take to come up (migrations, stand-ins, the system).
START_TIMEOUT = 60.0


@attrs.define
class LogEntry:
    logger: str
    level: str
    message: str
    traceback: str | None

    def render(self) -> str:
        text = f"[{self.level} {self.logger}] {self.message}"
        return f"{text}\n{self.traceback}" if self.traceback else text


class ServerLog(logging.Handler):
    """Every record at WARNING or above, from any logger, with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.entries: list[LogEntry] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        trace = None
        if record.exc_info and record.exc_info[1] is not None:
            trace = "".join(traceback.format_exception(*record.exc_info))
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not break the server
            message = str(record.msg)
        with self._lock:
            self.entries.append(LogEntry(record.name, record.levelname, message, trace))

    def mark(self) -> int:
        with self._lock:
            return len(self.entries)

    def since(self, mark: int) -> list[LogEntry]:
        with self._lock:
            return list(self.entries[mark:])


@attrs.define
class LiveAftercall:
    """The served app and a way into its Trio loop."""

    dsn: str
    schema: str
    url: str = ""
    port: int = 0
    log: ServerLog = attrs.Factory(ServerLog)
    system: System | None = None
    store: EventStore | None = None
    twilio: TwilioStandIn | None = None
    elevenlabs: ElevenLabsStandIn | None = None
    _token: trio.lowlevel.TrioToken | None = None
    _stop: trio.Event | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = attrs.Factory(threading.Event)
    _failure: BaseException | None = None

    # -- the tests' side ------------------------------------------------------------------
    @property
    def public_url(self) -> str:
        """``PUBLIC_BASE_URL``: what Twilio signatures are computed over."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        logging.getLogger().addHandler(self.log)
        self._thread = threading.Thread(target=self._main, name="fuzz-aftercall", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError(f"aftercall did not start within {START_TIMEOUT} s")
        if self._failure is not None:
            raise RuntimeError(f"aftercall failed to start:\n{self.failure_text()}")

    def stop(self) -> None:
        try:
            if self._token is not None and self._stop is not None:
                stop = self._stop
                with contextlib.suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(stop.set, trio_token=self._token)
            if self._thread is not None:
                self._thread.join(60)
        finally:
            logging.getLogger().removeHandler(self.log)
        if self._failure is not None:
            raise RuntimeError(f"the server thread failed:\n{self.failure_text()}")

    def failure_text(self) -> str:
        """Why the server's loop ended, each leaf exception with its own traceback."""
        if self._failure is None:
            return ""
        return "\n".join(
            "".join(traceback.format_exception(leaf)) for leaf in _leaves(self._failure)
        )

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 30.0) -> T:
        """Run ``fn(*args)`` in the server's loop, from a test (bounded by ``timeout``)."""
        assert self._token is not None, "the server is not running"

        async def bounded() -> T:
            with trio.fail_after(timeout):
                return await fn(*args)

        return trio.from_thread.run(bounded, trio_token=self._token)

    def join(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for a server whose loop is ending to finish."""
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._failure is None

    # -- the server's side ----------------------------------------------------------------
    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._failure = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self.port = free_port()
        async with (
            open_postgres_store(self.dsn, PostgresOptions(schema=self.schema)) as store,
            serve_elevenlabs(ElevenLabsStandIn(webhook_secret=WEBHOOK_SECRET)) as elevenlabs,
            serve_twilio(TwilioStandIn()) as twilio,
        ):
            twilio.webhook_url = f"{self.public_url}/webhooks/twilio/whatsapp"
            environ = {
                **stand_in_environment(elevenlabs, twilio, self.public_url),
                "ELEVENLABS_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "AFTERCALL_ADMIN_TOKEN": ADMIN_TOKEN,
                "AFTERCALL_TURN_TIMEOUT": "5",
            }
            app = create_app(
                partial(run_system, environ=environ, store=store), quiet_errors=(SettingsError,)
            )
            async with serve_asgi(TrioOnly(app), port=self.port) as url:
                self.url = url
                self.system = app.config["AFTERCALL_SYSTEM"]
                self.store = store
                self.twilio = twilio
                self.elevenlabs = elevenlabs
                self._ready.set()
                await self._stop.wait()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@attrs.define
class Server:
    """The live app for a whole fuzz module; started again on its schema if a request
    brought it down (the request that did is reported as `ServerCrashed` by the prober)."""

    dsn: str
    schema: str
    current: LiveAftercall | None = None
    crashes: list[str] = attrs.Factory(list)

    @property
    def live(self) -> LiveAftercall:
        if self.current is not None and not self.current.alive():
            self.crashes.append(self.current.failure_text())
            self._stop_quietly(self.current)
            self.current = None
        if self.current is None:
            self.current = LiveAftercall(self.dsn, self.schema)
            self.current.start()
        return self.current

    def close(self) -> None:
        if self.current is not None:
            current, self.current = self.current, None
            current.stop()

    @staticmethod
    def _stop_quietly(live: LiveAftercall) -> None:
        with contextlib.suppress(RuntimeError):  # its failure was recorded
            live.stop()
