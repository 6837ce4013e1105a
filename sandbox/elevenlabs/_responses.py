"""JSON in and out for the stand-in's routes, shaped as the platform's FastAPI answers are.

Shared by the REST routes (``_server``) and the control API (``_control``); ``_server``
registers the control routes, so these helpers live below both rather than in either.
Bodies are serialised with ``json.dumps`` so key order and ``null``s are exactly what the
record renderers produced.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Response, request

from sandbox.elevenlabs._errors import RequestError

REFUSAL_DETAIL = {
    429: {"status": "too_many_concurrent_requests", "message": "Too many concurrent requests"},
    503: {"status": "service_unavailable", "message": "Service temporarily unavailable"},
}


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


def error_response(error: RequestError) -> Response:
    return json_response({"detail": error.detail}, error.status)


def refusal_response(status: int) -> Response:
    detail = REFUSAL_DETAIL.get(status, {"status": "refused", "message": "Refused"})
    return json_response({"detail": detail}, status)


async def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 422 shaped like FastAPI's."""
    raw = await request.get_data(as_text=True)
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise RequestError(
            422, [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]
        ) from None
    if not isinstance(body, dict):
        raise RequestError(
            422, [{"loc": ["body"], "msg": "Input should be an object", "type": "dict_type"}]
        )
    return body
