"""Health: is the process alive (``/healthz``), and is it ready for traffic (``/readyz``)."""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint

from web.context import current_system

health = Blueprint("health", __name__)


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Says nothing about its dependencies (that is /readyz)."""
    return {"status": "ok"}


@health.get("/readyz")
async def readyz() -> tuple[dict[str, Any], int]:
    """Ready: the event log answers and the actor system runs."""
    system = current_system()
    problems = []
    try:
        with trio.fail_after(2):
            head = await system.store.head()
    except (Exception, trio.TooSlowError) as exc:
        problems.append(f"event log: {type(exc).__name__}")
        head = None
    stats = system.phones.statistics()
    if stats.closing:
        problems.append("actor system is shutting down")
    body = {
        "status": "ready" if not problems else "not ready",
        "problems": problems,
        "event_log_head": head,
        "active_actors": stats.active_actors,
    }
    return body, 200 if not problems else 503
