"""Health: is the process alive (``/healthz``), and is it ready for traffic (``/readyz``).

``/readyz`` answers one of three, with the reason in its JSON:

- 200 ``"status": "ready"``: the event log answers, the actor system runs, and every read
  model has applied every event.
- 200 ``"status": "degraded"``: ready as above, but a projection parked events it could not
  apply (``projections.parking``) and went on without them: the history, metrics or
  conversations it serves lack those events. ``"degraded"`` says which projection, how many
  events and the first one's error; ``aftercall projections status`` lists them and
  ``aftercall projections retry`` applies them again once their cause is fixed. It stays
  200 on purpose: the webhooks and the conversations do not depend on the read models, and
  a probe that took this instance out of the load balancer would turn a stale report into
  lost messages. Alert on ``"status"``, not on the code.
- 503 ``"status": "not ready"``: the event log does not answer, or the actor system is
  shutting down (``"problems"`` says which); parked events are reported beside it.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint

from projections.parking import ParkedEvent, summarize
from web.context import current_system

health = Blueprint("health", __name__)

#: Seconds each dependency gets to answer before /readyz says it does not.
_PROBE_SECONDS = 2


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Says nothing about its dependencies (that is /readyz)."""
    return {"status": "ok"}


@health.get("/readyz")
async def readyz() -> tuple[dict[str, Any], int]:
    """Ready (or degraded, or not): see the module's docstring."""
    system = current_system()
    problems = []
    try:
        with trio.fail_after(_PROBE_SECONDS):
            head = await system.store.head()
    except (Exception, trio.TooSlowError) as exc:
        problems.append(f"event log: {type(exc).__name__}")
        head = None
    stats = system.phones.statistics()
    if stats.closing:
        problems.append("actor system is shutting down")
    degraded: list[str] = []
    parked: dict[str, Any] = {}
    runner = system.projections
    if runner is not None and head is not None:  # without the log, its database is away too
        try:
            with trio.fail_after(_PROBE_SECONDS):
                events = await runner.parked()
        except (Exception, trio.TooSlowError) as exc:
            degraded.append(f"read models: cannot list parked events ({type(exc).__name__})")
        else:
            for summary in summarize(events):
                degraded.append(summary.describe())
                parked[summary.projection] = {"count": summary.count, **_first(summary.first)}
    if problems:
        status, code = "not ready", 503
    else:
        status, code = ("degraded" if degraded else "ready"), 200
    body: dict[str, Any] = {
        "status": status,
        "problems": problems,
        "degraded": degraded,
        "parked_events": parked,
        "event_log_head": head,
        "active_actors": stats.active_actors,
    }
    return body, code


def _first(event: ParkedEvent) -> dict[str, Any]:
    # Position and type, not the stream: this answers unauthenticated, and a stream names
    # a phone number. The CLI shows the rest.
    return {
        "first_position": event.position,
        "first_type": event.type,
        "first_error": event.error,
    }
