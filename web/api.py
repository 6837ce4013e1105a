"""The JSON API over the read models, for dashboards and scripts, and the operators' hand.

``GET /api/conversations`` (``?active=true``, ``?waiting=true``, ``?state=failed``,
``?limit=50``), ``GET /api/conversations/<phone>`` (the conversation and its latest
messages; the phone in E.164, ``+`` written as ``%2B`` or left out), ``GET /api/metrics``
(with each projection's position against the log), ``GET /api/optouts`` (``?all=true``).

People in control (``followup.control``; each answers with the HTTP status its rule gives):

- ``POST /api/conversations/<phone>/handoff`` ``{"reason"?, "operator"?}``: a person takes
  the conversation over; the bot says nothing until it is handed back. 409 when another
  operator has it.
- ``POST /api/conversations/<phone>/messages`` ``{"text", "operator"?}``: the operator's
  message, sent by the phone actor like any reply (202). 409 when the person opted out or
  cannot receive; 422 outside WhatsApp's 24-hour window (only an approved template can be
  delivered then: ``{"template": true}`` sends the follow-up template, the call's name and
  summary, and is 422 when none is configured or there was no call). Writing to a
  conversation the bot has takes it over. An ``Idempotency-Key`` header makes a retried
  request a no-op (200).
- ``POST /api/conversations/<phone>/resume`` ``{"reason"?, "operator"?}``: hand it back
  to the bot.

A field a route does not take is refused (400), not ignored.

The operator is ``"api"`` unless the body names one: the token says the caller may act,
not who they are.

Every route wants ``Authorization: Bearer <AFTERCALL_ADMIN_TOKEN>``: 401 without it or with
a wrong one (compared in constant time). When no token is configured the API is off (403),
rather than open: these answers hold people's messages.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import attrs
from quart import Blueprint, Response, jsonify, request

from events.phones import identity_phone
from followup import control
from followup.conversation import Refused
from projections import queries
from projections.runner import ProjectionRunner
from web.context import current_system
from web.post_call import json_problem

api = Blueprint("api", __name__, url_prefix="/api")

#: The most rows one answer holds.
MAX_LIMIT = 1000


def _error(status: int, reason: str, **headers: str) -> Response:
    response = jsonify({"error": reason})
    response.status_code = status
    response.headers.update(headers)
    return response


def _refused() -> Response | None:
    """Why the caller may not use the API (no token configured, a wrong one), or None."""
    system = current_system()
    token: str | None = system.settings.admin_token
    if not token:
        return _error(403, "the admin API is off: set AFTERCALL_ADMIN_TOKEN to enable it")
    given = request.headers.get("Authorization", "")
    scheme, _, credentials = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    ):
        return _error(
            401,
            "missing or wrong bearer token (Authorization: Bearer <AFTERCALL_ADMIN_TOKEN>)",
            **{"WWW-Authenticate": 'Bearer realm="aftercall"'},
        )
    return None


def _runner() -> tuple[ProjectionRunner | None, Response | None]:
    """The running projections, once the caller has shown the admin token."""
    refused = _refused()
    if refused is not None:
        return None, refused
    runner = current_system().projections
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
        if _flag("waiting"):
            states = [*states, *queries.WAITING_STATES]
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


@api.get("/optouts")
async def list_optouts() -> Response:
    """The phones nothing is sent to (``?all=true``: also those who opted back in)."""
    runner, refused = _runner()
    if refused is not None:
        return refused
    assert runner is not None
    try:
        rows = await queries.optouts(
            runner.models, everyone=_flag("all"), limit=_int("limit", MAX_LIMIT)
        )
    except ValueError as exc:
        return _error(400, str(exc))
    return jsonify({"optouts": [queries.jsonable(r) for r in rows]})


# -- people in control ----------------------------------------------------------------------

#: Longest operator name, hand-off reason and message (four WhatsApp messages of 1,600).
MAX_OPERATOR: Final = 100
MAX_REASON: Final = 500
MAX_TEXT: Final = 4 * 1600
MAX_IDEMPOTENCY_KEY: Final = 200


class BadRequest(ValueError):
    """A request body or field that cannot be used; answered 400 with the message."""


def _phone(raw: str) -> str:
    # A '+' in a path may arrive as a space (form decoding); none also means E.164.
    return identity_phone("+" + raw.strip().lstrip("+"))


async def _body(*, required: bool) -> dict[str, Any]:
    """The JSON object the request carries (``{}`` for an empty body when allowed)."""
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    if not raw.strip():
        if required:
            raise BadRequest('a JSON object body is required, e.g. {"text": "..."}')
        return {}
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the body is not JSON ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    problem = json_problem(data)
    if problem is not None:
        raise BadRequest(problem)
    return data


def _only(data: dict[str, Any], *known: str) -> None:
    """Refuse fields this route does not take: a misspelt one would otherwise be ignored
    in silence (``{"txt": ...}``, ``{"operater": ...}``)."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise BadRequest(f"unknown field(s) {shown}; this route takes {', '.join(known)}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _text(data: dict[str, Any], name: str, most: int, *, required: bool = False) -> str | None:
    """A string field: trimmed, not empty, at most ``most`` characters, storable (no NUL,
    no lone surrogate: PostgreSQL's jsonb and UTF-8 take neither)."""
    value = data.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name!r} is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string")
    value = value.strip()
    if not value:
        if required:
            raise BadRequest(f"{name!r} must not be empty (nothing empty is ever sent)")
        return None
    if len(value) > most:
        raise BadRequest(f"{name!r} is {len(value)} characters; at most {most}")
    if "\x00" in value:
        raise BadRequest(f"{name!r} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name!r} is not valid Unicode (a lone surrogate)") from None
    return value


def _operator(data: dict[str, Any]) -> str:
    return _text(data, "operator", MAX_OPERATOR) or control.API_OPERATOR


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )
    return key


def _done(done: control.Done, answer_status: int, **extra: Any) -> Response:
    """Wake the phone actor for what was recorded, and answer (200 for a repeat)."""
    if not done.duplicate:
        current_system().notify_phone(done.phone, done.version, done.last)
    response = jsonify({"phone": done.phone, "recorded": not done.duplicate, **extra})
    response.status_code = 200 if done.duplicate else answer_status
    return response


async def _operator_action(
    phone: str,
    fields: tuple[str, ...],
    act: Callable[[str, str, dict[str, Any]], Awaitable[control.Done]],
    answer_status: int,
    **extra: str,
) -> Response:
    """The three operator routes: the token, the phone, a JSON body of ``fields`` and
    ``operator`` only, then ``act(phone, operator, body)``; refusals as 4xx."""
    refused = _refused()
    if refused is not None:
        return refused
    try:
        e164 = _phone(phone)
        data = await _body(required="text" in fields)
        _only(data, *fields, "operator")
        operator = _operator(data)
        done = await act(e164, operator, data)
    except Refused as exc:
        return _error(exc.status, exc.reason)
    except ValueError as exc:  # BadRequest, InvalidPhone
        return _error(400, str(exc))
    return _done(done, answer_status, operator=operator, **extra)


def _reason(data: dict[str, Any]) -> str | None:
    return _text(data, "reason", MAX_REASON)


def template_settings() -> control.TemplateSettings:
    """The approved template operators may send outside the 24-hour window."""
    settings = current_system().settings
    return control.TemplateSettings(settings.first_message_template_sid, settings.unnamed)


@api.post("/conversations/<path:phone>/handoff")
async def take_over(phone: str) -> Response:
    async def act(e164: str, operator: str, data: dict[str, Any]) -> control.Done:
        return await control.take_over(
            current_system().store, e164, operator, _reason(data), datetime.now(UTC)
        )

    return await _operator_action(phone, ("reason",), act, 200, control="human")


@api.post("/conversations/<path:phone>/messages")
async def operator_message(phone: str) -> Response:
    async def act(e164: str, operator: str, data: dict[str, Any]) -> control.Done:
        store, now, key = current_system().store, datetime.now(UTC), _idempotency_key()
        template = data.get("template")
        if template is not None and not isinstance(template, bool):
            raise BadRequest("'template' must be true or false")
        if template:
            if "text" in data:
                raise BadRequest("give either 'text' or 'template': true, not both")
            return await control.request_operator_template(
                store, e164, operator, template_settings(), now, key
            )
        text = _text(data, "text", MAX_TEXT, required=True)
        assert text is not None  # required
        return await control.request_operator_message(store, e164, operator, text, now, key)

    return await _operator_action(phone, ("text", "template"), act, 202, status="requested")


@api.post("/conversations/<path:phone>/resume")
async def hand_back(phone: str) -> Response:
    async def act(e164: str, operator: str, data: dict[str, Any]) -> control.Done:
        return await control.hand_back(
            current_system().store, e164, operator, datetime.now(UTC), _reason(data)
        )

    return await _operator_action(phone, ("reason",), act, 200, control="bot")
