"""The JSON API over the read models, for dashboards and scripts.

``GET /api/conversations`` (``?active=true``, ``?state=failed``, ``?limit=50``),
``GET /api/conversations/<phone>`` (the conversation and its latest messages; the phone in
E.164, ``+`` written as ``%2B`` or left out), ``GET /api/metrics`` (with each projection's
position against the log).

Every route wants ``Authorization: Bearer <AFTERCALL_ADMIN_TOKEN>``: 401 without it or with
a wrong one (compared in constant time). When no token is configured the API is off (403),
rather than open: these answers hold people's messages.
"""

from __future__ import annotations

import hmac
from typing import Any

import attrs
from quart import Blueprint, Response, jsonify, request

from events.phones import identity_phone
from projections import queries
from projections.runner import ProjectionRunner
from web.context import current_system

api = Blueprint("api", __name__, url_prefix="/api")

#: The most rows one answer holds.
MAX_LIMIT = 1000


def _error(status: int, reason: str, **headers: str) -> Response:
    response = jsonify({"error": reason})
    response.status_code = status
    response.headers.update(headers)
    return response


def _runner() -> tuple[ProjectionRunner | None, Response | None]:
    """The running projections, once the caller has shown the admin token."""
    system = current_system()
    token: str | None = system.settings.admin_token
    if not token:
        return None, _error(403, "the admin API is off: set AFTERCALL_ADMIN_TOKEN to enable it")
    given = request.headers.get("Authorization", "")
    scheme, _, credentials = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    ):
        return None, _error(
            401,
            "missing or wrong bearer token (Authorization: Bearer <AFTERCALL_ADMIN_TOKEN>)",
            **{"WWW-Authenticate": 'Bearer realm="aftercall"'},
        )
    runner = system.projections
    if runner is None:
        return None, _error(503, "projections are not running in this process")
    return runner, None


def _flag(name: str) -> bool:
    raw = request.args.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be true or false, not {raw!r}")


def _int(name: str, default: int, *, most: int = MAX_LIMIT) -> int:
    """A count from the query string, 1 to ``most`` (the database would refuse a LIMIT
    past int64, and a page of millions of rows is not a page)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if (
        not (raw.isascii() and raw.isdigit())
        or len(raw) > len(str(most))
        or not 1 <= int(raw) <= most
    ):
        raise ValueError(f"{name} must be a whole number from 1 to {most}, not {raw[:40]!r}")
    return int(raw)


@api.get("/conversations")
async def list_conversations() -> Response:
    runner, refused = _runner()
    if refused is not None:
        return refused
    assert runner is not None
    try:
        states = request.args.getlist("state") or (
            list(queries.ACTIVE_STATES) if _flag("active") else []
        )
        rows = await queries.conversations(runner.models, states=states, limit=_int("limit", 100))
    except ValueError as exc:
        return _error(400, str(exc))
    return jsonify({"conversations": [queries.jsonable(r) for r in rows]})


@api.get("/conversations/<path:phone>")
async def show_conversation(phone: str) -> Response:
    runner, refused = _runner()
    if refused is not None:
        return refused
    assert runner is not None
    try:
        # A '+' in a path may arrive as a space (form decoding); none also means E.164.
        e164 = identity_phone("+" + phone.strip().lstrip("+"))
        found = await queries.conversation(runner.models, e164, messages=_int("messages", 50))
    except ValueError as exc:  # InvalidPhone included
        return _error(400, str(exc))
    except queries.NotFound as exc:
        return _error(404, str(exc))
    found["messages"] = [queries.jsonable(m) for m in found["messages"]]
    return jsonify(queries.jsonable(found))


@api.get("/metrics")
async def show_metrics() -> Response:
    runner, refused = _runner()
    if refused is not None:
        return refused
    assert runner is not None
    found: dict[str, Any] = await queries.metrics(runner.models)
    found["projections"] = [attrs.asdict(s) for s in runner.statistics()]
    # This process's count since it started (two workers on one database: see
    # followup.phone.DecisionConflict).
    found["decision_conflicts"] = current_system().conflicts.decision_conflicts
    return jsonify(found)
