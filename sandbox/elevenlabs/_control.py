"""``/_sandbox/...``: a small JSON API to drive the stand-in from outside the process.

Everything here is also a method or attribute of ``ElevenLabsStandIn``; the routes exist for
the demo CLI and for tests in other processes. No auth: the stand-in only ever listens on
loopback.
"""

from __future__ import annotations

from typing import Any

import attrs
from quart import Response
from quart_trio import QuartTrio

from sandbox.elevenlabs._agents import AgentConfig
from sandbox.elevenlabs._brain import context_brain, scripted_brain
from sandbox.elevenlabs._calls import OUTCOMES, CallScript
from sandbox.elevenlabs._errors import RequestError
from sandbox.elevenlabs._faults import Faults
from sandbox.elevenlabs._records import conversation_json
from sandbox.elevenlabs._responses import json_body, json_response
from sandbox.elevenlabs._served import ServedStandIn
from sandbox.elevenlabs._session import LiveSession


def agent_to_json(agent: AgentConfig) -> dict[str, Any]:
    return {
        "agent_id": agent.agent_id,
        "name": agent.display_name,
        "first_message": agent.first_message,
        "allowed_overrides": sorted(agent.allowed_overrides),
        "required_dynamic_variables": sorted(agent.required_dynamic_variables),
        "max_duration_seconds": agent.max_duration_seconds,
        "idle_timeout_seconds": agent.idle_timeout_seconds,
        "stream_text_parts": agent.stream_text_parts,
        "requires_auth": agent.requires_auth,
        "text_only": agent.text_only,
        "brain": "context" if agent.brain is context_brain else "custom",
    }


_AGENT_FIELDS = (
    "first_message",
    "allowed_overrides",
    "required_dynamic_variables",
    "max_duration_seconds",
    "idle_timeout_seconds",
    "stream_text_parts",
    "requires_auth",
    "text_only",
    "name",
)


def agent_from_json(agent_id: str, body: dict[str, Any]) -> AgentConfig:
    """An agent from JSON; ``"replies": [...]`` gives it a ``scripted_brain``."""
    unknown = set(body) - {*_AGENT_FIELDS, "replies"}
    if unknown:
        raise RequestError.invalid(["body", *sorted(unknown)], "Unknown field")
    fields = {key: body[key] for key in _AGENT_FIELDS if key in body}
    replies = body.get("replies")
    if replies is not None:
        if (
            not isinstance(replies, list)
            or not replies
            or not all(isinstance(r, str) for r in replies)
        ):
            raise RequestError.invalid(["body", "replies"], "A non-empty list of strings")
        fields["brain"] = scripted_brain(*replies)
    try:
        return AgentConfig(agent_id, **fields)
    except (TypeError, ValueError) as exc:
        raise RequestError.invalid(["body"], str(exc)) from None


def faults_from_json(body: dict[str, Any]) -> Faults:
    names = {field.name for field in attrs.fields(Faults)}
    unknown = set(body) - names
    if unknown:
        raise RequestError.invalid(["body", *sorted(unknown)], "Unknown fault")
    return Faults(**body)


def session_to_json(session: LiveSession) -> dict[str, Any]:
    return {
        "conversation_id": session.conversation_id,
        "agent_id": session.agent_id,
        "active": session.active,
        "closed_by": session.closed_by,
        "close_code": session.close_code,
        "close_reason": session.close_reason,
        "query": session.query,
        "received": session.received,
        "sent": session.sent,
        "dynamic_variables": session.dynamic_variables,
        "contextual_updates": [
            {"context_id": context_id, "text": text}
            for context_id, text in session.contextual_updates
        ],
        "turns": [{"role": t.role, "text": t.text} for t in session.turns],
        "text_only": session.text_only,
        "user_activity_count": session.user_activity_count,
        "pongs": [{"event_id": e, "rtt_ms": ms} for e, ms in session.pongs],
        "unanswered_pings": session.unanswered_pings,
        "brain_error": session.brain_error,
        "faults": attrs.asdict(session.faults) if session.faults else None,
    }


def register_control_routes(app: QuartTrio, standin: ServedStandIn) -> None:
    @app.get("/_sandbox/agents")
    async def list_agents() -> Response:
        return json_response([agent_to_json(a) for a in standin.agents.values()])

    @app.put("/_sandbox/agents/<agent_id>")
    async def put_agent(agent_id: str) -> Response:
        agent = standin.add_agent(agent_from_json(agent_id, await json_body()))
        return json_response(agent_to_json(agent))

    @app.delete("/_sandbox/agents/<agent_id>")
    async def delete_agent(agent_id: str) -> Response:
        standin.agent(agent_id)
        del standin.agents[agent_id]
        return json_response({})

    @app.put("/_sandbox/faults")
    async def put_global_faults() -> Response:
        standin.set_faults(faults_from_json(await json_body()))
        return json_response(attrs.asdict(standin.faults))

    @app.put("/_sandbox/agents/<agent_id>/faults")
    async def put_agent_faults(agent_id: str) -> Response:
        standin.agent(agent_id)
        faults = faults_from_json(await json_body())
        standin.set_faults(faults, agent_id=agent_id)
        return json_response(attrs.asdict(faults))

    @app.put("/_sandbox/sessions/<conversation_id>/faults")
    async def put_session_faults(conversation_id: str) -> Response:
        faults = faults_from_json(await json_body())
        standin.set_faults(faults, conversation_id=conversation_id)
        return json_response(attrs.asdict(faults))

    @app.post("/_sandbox/connections/faults")
    async def queue_connection_faults() -> Response:
        standin.queue_connection_faults(faults_from_json(await json_body()))
        return json_response({"queued": True})

    @app.post("/_sandbox/clock/advance")
    async def advance_clock() -> Response:
        body = await json_body()
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise RequestError.invalid(["body", "seconds"], "A number >= 0")
        await standin.advance(float(seconds))
        return json_response({"now_unix": standin.now_unix, "elapsed": standin.elapsed})

    @app.get("/_sandbox/clock")
    async def get_clock() -> Response:
        return json_response({"now_unix": standin.now_unix, "elapsed": standin.elapsed})

    @app.put("/_sandbox/timing")
    async def put_timing() -> Response:
        body = await json_body()
        try:
            standin.call_timing = attrs.evolve(standin.call_timing, **body)
        except TypeError as exc:
            raise RequestError.invalid(["body"], str(exc)) from None
        return json_response(attrs.asdict(standin.call_timing))

    @app.put("/_sandbox/calls/scripts/<number>")
    async def put_call_script(number: str) -> Response:
        body = await json_body()
        outcomes = body.get("outcomes", ["completed"])
        if not isinstance(outcomes, list) or not set(outcomes) <= OUTCOMES:
            raise RequestError.invalid(["body", "outcomes"], f"Subset of {sorted(OUTCOMES)}")
        fields: dict[str, Any] = {"outcomes": tuple(outcomes)}
        if "user_turns" in body:
            fields["user_turns"] = tuple(body["user_turns"])
        if "summary" in body:
            fields["summary"] = body["summary"]
        try:
            standin.call_scripts[number] = CallScript(**fields)
        except ValueError as exc:
            raise RequestError.invalid(["body"], str(exc)) from None
        return json_response({"number": number, **fields})

    @app.get("/_sandbox/sessions")
    async def list_sessions() -> Response:
        return json_response([session_to_json(s) for s in standin.sessions.values()])

    @app.get("/_sandbox/sessions/<conversation_id>")
    async def get_session(conversation_id: str) -> Response:
        return json_response(session_to_json(standin.session(conversation_id)))

    @app.post("/_sandbox/sessions/<conversation_id>/correction")
    async def correct(conversation_id: str) -> Response:
        body = await json_body()
        text = body.get("corrected_text")
        if not isinstance(text, str):
            raise RequestError.missing("corrected_text")
        try:
            await standin.correct_last_response(conversation_id, text)
        except LookupError as exc:
            raise RequestError(409, {"status": "no_agent_response", "message": str(exc)}) from None
        return json_response({"corrected": True})

    @app.post("/_sandbox/calls/completed")
    async def complete_call() -> Response:
        body = await json_body()
        number = body.get("external_number")
        if not isinstance(number, str):
            raise RequestError.missing("external_number")
        turns = body.get("user_turns")
        record = await standin.complete_call(
            number,
            agent_id=str(body.get("agent_id", "agent_sandbox")),
            user_turns=tuple(turns) if isinstance(turns, list) else None,
            summary=body.get("summary"),
            dynamic_variables=body.get("dynamic_variables"),
        )
        return json_response(conversation_json(record))

    @app.post("/_sandbox/calls/failed")
    async def fail_call() -> Response:
        body = await json_body()
        number = body.get("external_number")
        outcome = body.get("outcome", "no-answer")
        if not isinstance(number, str):
            raise RequestError.missing("external_number")
        if outcome not in ("failed", "no-answer"):
            raise RequestError.invalid(["body", "outcome"], "failed or no-answer")
        record = await standin.fail_call(
            number, agent_id=str(body.get("agent_id", "agent_sandbox")), outcome=outcome
        )
        return json_response(conversation_json(record))

    @app.put("/_sandbox/webhook")
    async def put_webhook() -> Response:
        body = await json_body()
        standin.webhook_url = body.get("url")
        standin.webhook_secret = body.get("secret")
        if "events" in body:
            standin.webhook_events = frozenset(body["events"])
        if "retry_delays" in body:
            standin.webhook_retry_delays = tuple(float(d) for d in body["retry_delays"])
        return json_response(
            {
                "url": standin.webhook_url,
                "secret_set": standin.webhook_secret is not None,
                "events": sorted(standin.webhook_events),
                "retry_delays": list(standin.webhook_retry_delays),
            }
        )

    @app.get("/_sandbox/webhooks/deliveries")
    async def list_deliveries() -> Response:
        return json_response(
            [
                {
                    "event_type": d.event_type,
                    "conversation_id": d.conversation_id,
                    "attempt": d.attempt,
                    "copy": d.copy,
                    "status_code": d.status_code,
                    "error": d.error,
                }
                for d in standin.webhook_deliveries
            ]
        )
