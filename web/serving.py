"""Run an ASGI app on Hypercorn's Trio worker inside the caller's structured scope.

The demo and the tests need "serve this app on 127.0.0.1, tell me the
URL, stop when I leave the block". Port 0 asks the kernel for a free port, so tests never
collide; the bound URL comes back from Hypercorn's ``task_status``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


@asynccontextmanager
async def serve_asgi(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, graceful_timeout: float = 1.0
) -> AsyncIterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (``http://127.0.0.1:PORT``)."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = 75
    stop = trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=shutdown_trigger, task_status=task_status
            )
        )
        try:
            yield binds[0].rstrip("/")
        finally:
            stop.set()
