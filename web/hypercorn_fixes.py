"""One fix to Hypercorn's Trio worker (0.18), applied by ``web.factory.create_app``.

Hypercorn writes a connection's socket from two tasks: the connection's reader (its 400
for a malformed request, e.g. a bad chunk size) and the app's task (the answer). Writes
take ``TCPServer.send_lock``; closing does not. When the app answers before the request
body has all arrived, Hypercorn closes the connection from the app's task, and
``send_eof`` holds trio's send-conflict detector across a checkpoint: a reader writing its
400 at that moment got ``BusyResourceError``, which nothing caught, and the whole worker
process ended (found by ``tests/fuzz``: one 86-byte request, about one time in three).

The fix takes the same lock to close. Waiting for it is bounded: a write stuck on a
client that reads nothing must not keep the connection open for ever, so after
``LOCK_WAIT`` the socket is closed anyway (which ends that write too).
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio
from hypercorn.trio.tcp_server import TCPServer

#: How long closing waits for a write in progress before closing under it.
LOCK_WAIT = 5.0


async def _close_after_writes(self: Any) -> None:
    with trio.move_on_after(LOCK_WAIT):
        async with self.send_lock:
            # What Hypercorn's own _close ignores, for the same reasons: gone, or TLS.
            with contextlib.suppress(
                trio.BrokenResourceError,
                AttributeError,
                trio.BusyResourceError,
                trio.ClosedResourceError,
            ):
                await self.stream.send_eof()
    await self.stream.aclose()


def serialise_closes() -> None:
    """Make Hypercorn's Trio TCPServer close under its send lock (idempotent)."""
    if getattr(TCPServer, "_close", None) is _close_after_writes:
        return
    if not hasattr(TCPServer, "_close") or not hasattr(TCPServer, "protocol_send"):
        raise RuntimeError(
            "hypercorn's TCPServer changed: review web/hypercorn_fixes.py for this version"
        )
    TCPServer._close = _close_after_writes  # type: ignore[method-assign]
