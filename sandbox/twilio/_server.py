"""The stand-in's HTTP face: Twilio's REST routes and the ``/_sandbox`` control API.

REST routes answer exactly as api.twilio.com does (reference §3); the control API is ours,
JSON in and out, for tests and for a person driving the sandbox by hand. The routes run on
`sandbox._routing`, not Quart: the benchmark sends one Messages API request per message,
beside aftercall on the same cores (that module says why).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from sandbox._routing import Request, Response, Router, json_response
from sandbox.twilio._errors import NoWebhookUrl
from sandbox.twilio._faults import Fault
from sandbox.twilio._protocol import (
    ListQuery,
    check_create,
    message_json,
    new_sid,
    page_json,
)
from sandbox.twilio._served import ServedStandIn
from sandbox.twilio._values import API_VERSION, ApiError, Media

_ACCOUNT = f"/{API_VERSION}/Accounts/<account_sid>"
_AUTH_FAILED = ApiError(
    status=401,
    code=20003,
    message="Authenticate",
    detail="Your AccountSid or AuthToken was incorrect.",
)


def _json(payload: object, status: int = 200, *, www_authenticate: bool = False) -> Response:
    headers = [("Twilio-Request-Id", new_sid("RQ"))]
    if www_authenticate:
        headers.append(("WWW-Authenticate", 'Basic realm="Twilio API"'))
    return json_response(payload, status, tuple(headers))


def _error(error: ApiError) -> Response:
    return _json(error.to_json(), error.status, www_authenticate=error.status == 401)


def _not_found(path: str) -> ApiError:
    return ApiError(status=404, code=20404, message=f"The requested resource {path} was not found")


def _control_error(message: str, status: int = 400) -> Response:
    return _json({"error": message}, status)


def _payload(request: Request) -> dict[str, Any]:
    payload = request.json()
    return payload if isinstance(payload, dict) else {}


def build_app(standin: ServedStandIn) -> Router:
    """The ASGI app serving ``standin``; faults are layered on by the caller."""
    app = Router(not_found=lambda request: _error(_not_found(request.path)))

    def authenticated(request: Request, account_sid: str) -> bool:
        """Basic auth with the account's own sid and token, for that account's URLs only.

        The comparison is constant-time and the token never appears in any answer.
        """
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (
            hmac.compare_digest(user.encode(), standin.account_sid.encode())
            and hmac.compare_digest(password.encode(), standin.auth_token.encode())
            and account_sid == standin.account_sid
        )

    # ------------------------------------------------------------------ REST

    @app.route("POST", f"{_ACCOUNT}/Messages.json")
    async def create_message(request: Request) -> Response:
        account_sid = request.params["account_sid"]
        if not authenticated(request, account_sid):
            return _error(_AUTH_FAILED)
        fields = request.form()
        checked = check_create(fields, senders=[standin.whatsapp_from], templates=standin.templates)
        if isinstance(checked, ApiError):
            return _error(checked)
        refused = standin.refusal_now(checked.to)
        if refused is not None:
            return _error(refused)
        return _json(message_json(standin.create_message(checked)), 201)

    @app.route("GET", f"{_ACCOUNT}/Messages.json")
    async def list_messages(request: Request) -> Response:
        account_sid = request.params["account_sid"]
        if not authenticated(request, account_sid):
            return _error(_AUTH_FAILED)
        query = ListQuery.from_args(request.args)
        if isinstance(query, ApiError):
            return _error(query)
        records = list(standin.messages.values())
        return _json(page_json(records, query, standin.account_sid))

    @app.route("GET", f"{_ACCOUNT}/Messages/<sid>.json")
    async def fetch_message(request: Request) -> Response:
        account_sid = request.params["account_sid"]
        sid = request.params["sid"]
        if not authenticated(request, account_sid):
            return _error(_AUTH_FAILED)
        record = standin.messages.get(sid)
        if record is None:
            return _error(_not_found(request.path))
        return _json(message_json(record))

    @app.route("GET", f"{_ACCOUNT}/Messages/<message_sid>/Media/<media_sid>")
    async def fetch_media(request: Request) -> Response:
        """Media content; Twilio requires Basic auth on media URLs (reference §1.2)."""
        account_sid = request.params["account_sid"]
        message_sid = request.params["message_sid"]
        media_sid = request.params["media_sid"]
        if not authenticated(request, account_sid):
            return _error(_AUTH_FAILED)
        item = standin.media.get(media_sid)
        if item is None or item.message_sid != message_sid:
            return _error(_not_found(request.path))
        return Response(200, item.content, content_type=item.content_type)

    # ------------------------------------------------------------------ control API

    @app.route("GET", "/_sandbox", "/_sandbox/")
    async def describe(request: Request) -> Response:
        """The account's public settings (the auth token is printed by the CLI only)."""
        return _json(
            {
                "account_sid": standin.account_sid,
                "whatsapp_from": standin.whatsapp_from,
                "webhook_url": standin.webhook_url,
                "status_callbacks": standin.status_callbacks,
                "clock_offset": standin.clock.offset,
                "base_url": standin.base_url,
            }
        )

    @app.route("PUT", "/_sandbox/webhook")
    async def set_webhook(request: Request) -> Response:
        payload = _payload(request)
        url = payload.get("url")
        if url is not None and not isinstance(url, str):
            return _control_error("url must be a string or null")
        standin.webhook_url = url
        return _json({"webhook_url": url})

    @app.route("PUT", "/_sandbox/status-callbacks")
    async def set_status_callbacks(request: Request) -> Response:
        payload = _payload(request)
        enabled = payload.get("enabled")
        if not isinstance(enabled, bool):
            return _control_error("enabled must be true or false")
        standin.status_callbacks = enabled
        return _json({"enabled": enabled})

    @app.route("POST", "/_sandbox/users/<phone>/messages")
    async def user_says(request: Request) -> Response:
        """A simulated user writes; answers once the app has answered the webhook."""
        phone = request.params["phone"]
        payload = _payload(request)
        try:
            media = [
                Media(item["content_type"], base64.b64decode(item.get("content_base64", "")))
                for item in payload.get("media", [])
            ]
            sid = await standin.user_says(
                phone,
                str(payload.get("body", "")),
                media=media,
                duplicate=bool(payload.get("duplicate", False)),
                bad_signature=bool(payload.get("bad_signature", False)),
                profile_name=str(payload.get("profile_name", "Sandbox User")),
            )
        except NoWebhookUrl as exc:
            return _control_error(str(exc), 409)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            return _control_error(f"bad user message: {exc}")
        return _json({"sid": sid}, 201)

    @app.route("GET", "/_sandbox/phones/<phone>/received")
    async def received(request: Request) -> Response:
        phone = request.params["phone"]
        try:
            records = standin.received(phone)
        except ValueError as exc:
            return _control_error(str(exc))
        return _json({"messages": [message_json(record) for record in records]})

    @app.route("GET", "/_sandbox/faults")
    async def list_faults(request: Request) -> Response:
        return _json(
            {
                "faults": [
                    {
                        "kind": armed.fault.kind,
                        "status": armed.fault.status,
                        "retry_after": armed.fault.retry_after,
                        "seconds": armed.fault.seconds,
                        "before_request": armed.fault.before_request,
                        "times": armed.times,
                        "phone": armed.phone,
                    }
                    for armed in standin.faults.armed
                ]
            }
        )

    @app.route("POST", "/_sandbox/faults")
    async def arm_fault(request: Request) -> Response:
        """Arm a fault: ``{"kind": "rate_limited"|"server_error"|"slow"|"dropped"|"held",
        ...}`` (``held`` takes ``before_request``)."""
        payload = _payload(request)
        try:
            fault = _fault_from(payload)
            times = payload.get("times", 1)
            standin.inject(
                fault, times=None if times is None else int(times), phone=payload.get("phone")
            )
        except (ValueError, KeyError, TypeError) as exc:
            return _control_error(f"bad fault: {exc}")
        return _json({"armed": len(standin.faults.armed)}, 201)

    @app.route("DELETE", "/_sandbox/faults")
    async def clear_faults(request: Request) -> Response:
        standin.clear_faults()
        return _json({"armed": 0})

    @app.route("GET", "/_sandbox/held")
    async def list_held(request: Request) -> Response:
        """The API requests held now (``held`` faults), oldest first."""
        return _json(
            {
                "held": [
                    {
                        "method": held.method,
                        "path": held.path,
                        "phone": held.phone,
                        "fields": dict(held.fields),
                        "done": held.done,
                    }
                    for held in standin.faults.held
                ]
            }
        )

    @app.route("POST", "/_sandbox/held/release")
    async def release_held(request: Request) -> Response:
        """Let held requests go on: all of them, or ``{"phone": ...}``'s."""
        phone = _payload(request).get("phone")
        if phone is not None and not isinstance(phone, str):
            return _control_error("phone must be a string or null")
        try:
            released = standin.faults.release(phone)
        except ValueError as exc:
            return _control_error(str(exc))
        return _json({"released": released})

    @app.route("POST", "/_sandbox/clock/advance")
    async def advance(request: Request) -> Response:
        payload = _payload(request)
        try:
            standin.advance(float(payload["seconds"]))
        except (ValueError, KeyError, TypeError) as exc:
            return _control_error(f"bad advance: {exc}")
        return _json({"offset": standin.clock.offset})

    @app.route("GET", "/_sandbox/templates")
    async def list_templates(request: Request) -> Response:
        return _json(
            {"templates": [{"sid": t.sid, "body": t.body} for t in standin.templates.values()]}
        )

    @app.route("POST", "/_sandbox/templates")
    async def register_template(request: Request) -> Response:
        payload = _payload(request)
        body = payload.get("body")
        sid = payload.get("sid")
        if not isinstance(body, str) or (sid is not None and not isinstance(sid, str)):
            return _control_error("body (and sid, if given) must be strings")
        return _json({"sid": standin.register_template(body, sid=sid), "body": body}, 201)

    @app.route("GET", "/_sandbox/deliveries")
    async def deliveries(request: Request) -> Response:
        return _json(
            {
                "deliveries": [
                    {
                        "kind": delivery.kind,
                        "url": delivery.url,
                        "message_sid": delivery.message_sid,
                        "params": dict(delivery.params),
                        "status_code": delivery.status_code,
                        "debugger_code": delivery.debugger_code,
                    }
                    for delivery in standin.deliveries
                ]
            }
        )

    return app


def _fault_from(payload: dict[str, Any]) -> Fault:
    kind = payload["kind"]
    if kind == "rate_limited":
        retry_after = payload.get("retry_after")
        return Fault.rate_limited(None if retry_after is None else int(retry_after))
    if kind == "server_error":
        status = int(payload.get("status", 500))
        if status not in (500, 503):
            raise ValueError("status must be 500 or 503")
        return Fault.server_error(500 if status == 500 else 503)
    if kind == "slow":
        return Fault.slow(float(payload["seconds"]))
    if kind == "dropped":
        return Fault.dropped()
    if kind == "held":
        before_request = payload.get("before_request", False)
        if not isinstance(before_request, bool):
            raise ValueError("before_request must be true or false")
        return Fault.held(before_request=before_request)
    raise ValueError(f"unknown fault kind {kind!r}")
