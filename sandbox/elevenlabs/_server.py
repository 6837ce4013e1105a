"""The QuartTrio app: the REST API and the agent WebSocket on one port, plus ``/_sandbox``.

Handlers only translate HTTP to stand-in calls and back; the decisions live in the stand-in
and in ``_protocol.py``. The app is built over a ``ServedStandIn`` (``_served``), not the
stand-in class, so this module never imports the one that builds it.
"""

from __future__ import annotations

import json

from quart import Response, request, websocket
from quart_trio import QuartTrio

from sandbox.elevenlabs._control import register_control_routes
from sandbox.elevenlabs._errors import RequestError
from sandbox.elevenlabs._protocol import error_event
from sandbox.elevenlabs._records import (
    batch_detailed_json,
    batch_json,
    conversation_json,
    conversation_summary_json,
)
from sandbox.elevenlabs._responses import (
    error_response,
    json_body,
    json_response,
    refusal_response,
)
from sandbox.elevenlabs._served import ServedStandIn

INVALID_API_KEY = {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}


def _flag(name: str) -> bool:
    return request.args.get(name, "false").lower() in ("1", "true", "yes")


def build_app(standin: ServedStandIn) -> QuartTrio:
    """Build the app over ``standin``; called once by the stand-in's constructor."""
    app = QuartTrio("sandbox.elevenlabs")

    @app.errorhandler(RequestError)
    async def handle_request_error(error: RequestError) -> Response:
        return error_response(error)

    @app.before_request
    async def check_api_key() -> Response | None:
        if standin.api_key is None or not request.path.startswith("/v1/"):
            return None
        if request.headers.get("xi-api-key") != standin.api_key:
            return json_response(INVALID_API_KEY, 401)
        return None

    async def get_signed_url() -> Response:
        agent_id = request.args.get("agent_id")
        if not agent_id:
            raise RequestError.missing("agent_id", where="query")
        refusal = standin.consume_refusal(agent_id, handshake=False)
        if refusal is not None:
            return refusal_response(refusal)
        ws_base = request.host_url.rstrip("/").replace("http", "ws", 1)
        url = standin.signed_url(
            agent_id, ws_base, include_conversation_id=_flag("include_conversation_id")
        )
        return json_response({"signed_url": url})

    app.add_url_rule(
        "/v1/convai/conversation/get-signed-url",
        "get_signed_url",
        get_signed_url,
        methods=["GET"],
    )
    app.add_url_rule(
        "/v1/convai/conversation/get_signed_url",
        "get_signed_url_deprecated",
        get_signed_url,
        methods=["GET"],
    )

    @app.websocket("/v1/convai/conversation")
    async def conversation_socket() -> Response | None:
        query = {key: value for key, value in websocket.args.items()}
        refusal = standin.consume_refusal(query.get("agent_id"), handshake=True)
        if refusal is not None:
            return refusal_response(refusal)
        subprotocol = "convai" if "convai" in websocket.requested_subprotocols else None
        await websocket.accept(subprotocol=subprotocol)
        admitted = standin.admit(query)
        socket = websocket._get_current_object()  # type: ignore[attr-defined]
        if not isinstance(admitted, tuple):
            code = admitted.close_code
            await socket.send(json.dumps(error_event(admitted.error_type, admitted.message, code)))
            await socket.close(code, admitted.message)
            return None
        agent, conversation_id, auth_method = admitted
        await standin.serve_socket(socket, agent, conversation_id, auth_method, query)
        return None

    @app.post("/v1/convai/batch-calling/submit")
    async def submit_batch() -> Response:
        return json_response(batch_json(standin.submit_batch(await json_body())))

    @app.get("/v1/convai/batch-calling/workspace")
    async def list_batches() -> Response:
        limit = max(1, min(int(request.args.get("limit", "100")), 100))
        agent_id = request.args.get("agent_id")
        batches = [
            b
            for b in reversed(list(standin.batches.values()))
            if agent_id is None or b.agent_id == agent_id
        ]
        last_doc = request.args.get("last_doc")
        if last_doc:
            ids = [b.id for b in batches]
            batches = batches[ids.index(last_doc) + 1 :] if last_doc in ids else []
        page = batches[:limit]
        has_more = len(batches) > limit
        return json_response(
            {
                "batch_calls": [batch_json(b) for b in page],
                "next_doc": page[-1].id if has_more and page else None,
                "has_more": has_more,
            }
        )

    @app.get("/v1/convai/batch-calling/<batch_id>")
    async def get_batch(batch_id: str) -> Response:
        return json_response(batch_detailed_json(standin.batch(batch_id)))

    @app.delete("/v1/convai/batch-calling/<batch_id>")
    async def delete_batch(batch_id: str) -> Response:
        standin.delete_batch(batch_id)
        return Response("", status=204)

    @app.post("/v1/convai/batch-calling/<batch_id>/cancel")
    async def cancel_batch(batch_id: str) -> Response:
        return json_response(batch_json(standin.cancel_batch(batch_id)))

    @app.post("/v1/convai/batch-calling/<batch_id>/retry")
    async def retry_batch(batch_id: str) -> Response:
        return json_response(batch_json(standin.retry_batch(batch_id)))

    @app.get("/v1/convai/conversations")
    async def list_conversations() -> Response:
        page_size = max(1, min(int(request.args.get("page_size", "30")), 100))
        filters = {
            key: request.args.get(key)
            for key in ("agent_id", "user_id", "call_successful")
            if request.args.get(key) is not None
        }
        records = [
            r
            for r in reversed(list(standin.conversations.values()))
            if (filters.get("agent_id") in (None, r.agent_id))
            and (filters.get("user_id") in (None, r.user_id))
            and (
                filters.get("call_successful")
                in (None, r.analysis.call_successful if r.analysis else "unknown")
            )
        ]
        start = int(request.args.get("cursor") or 0)
        page = records[start : start + page_size]
        has_more = start + page_size < len(records)
        include = request.args.get("summary_mode", "exclude") == "include"
        return json_response(
            {
                "conversations": [conversation_summary_json(r, include) for r in page],
                "next_cursor": str(start + page_size) if has_more else None,
                "has_more": has_more,
            }
        )

    @app.get("/v1/convai/conversations/<conversation_id>")
    async def get_conversation(conversation_id: str) -> Response:
        record = standin.conversations.get(conversation_id)
        if record is None:
            raise RequestError.not_found("conversation", conversation_id)
        return json_response(conversation_json(record))

    @app.delete("/v1/convai/conversations/<conversation_id>")
    async def delete_conversation(conversation_id: str) -> Response:
        if standin.conversations.pop(conversation_id, None) is None:
            raise RequestError.not_found("conversation", conversation_id)
        return json_response({})

    @app.post("/v1/convai/twilio/outbound-call")
    async def twilio_outbound_call() -> Response:
        body = await json_body()
        missing = [k for k in ("agent_id", "agent_phone_number_id", "to_number") if not body.get(k)]
        if missing:
            raise RequestError.missing(*missing)
        record = standin.place_call(
            str(body["agent_id"]),
            str(body["to_number"]),
            str(body["agent_phone_number_id"]),
            body.get("conversation_initiation_client_data"),
        )
        return json_response(
            {
                "success": True,
                "message": "Call initiated successfully",
                "conversation_id": record.conversation_id,
                "callSid": record.phone_call.call_sid if record.phone_call else None,
            }
        )

    register_control_routes(app, standin)
    return app
