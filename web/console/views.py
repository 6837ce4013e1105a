"""``/console``: the operator console's pages and actions.

Access, for every route of the blueprint but the sign-in form and the static files:

- no valid session: a page (GET) redirects to the sign-in form with ``next`` set; an
  action (POST) or the live stream answers 401;
- a POST must carry the session's CSRF token in its ``csrf`` field: 403 otherwise. The
  sign-in form, before any session, carries a token that must match a cookie of its own
  (double submit), so another site cannot sign a browser into an account of its choosing;
- the session cookie is HttpOnly, SameSite=Lax, Path=/console, and Secure when
  ``PUBLIC_BASE_URL`` is https.

Every page is HTML rendered by Jinja2 with autoescaping (the templates end in ``.html``),
so a customer's ``<script>`` is text. Pages also carry a Content-Security-Policy that
allows only the console's own script and stylesheet: a markup bug would still not run
anything. Bad input (a malformed phone, state, cursor, position or form) is a 400 page
naming the problem, never a 500.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlsplit

import trio
from quart import (
    Blueprint,
    Response,
    current_app,
    g,
    render_template,
    request,
)

from events.conversation import phone_stream
from events.phones import InvalidPhone, identity_phone
from events.store import EventStoreError, RecordedEvent, validate_stream_name
from followup import control
from followup.conversation import Refused
from projections import console_queries
from projections.parking import ParkedEvent
from projections.queries import NotFound
from projections.readmodels import ReadModels
from projections.rules import time_of
from web.console import render
from web.console.accounts import OperatorSession, SignedIn
from web.console.forms import FormError, csrf_in, parse_form
from web.console.live import LiveTail, Subscription
from web.context import WebSystem, current_system

console = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

SESSION_COOKIE: Final = "aftercall_console"
#: The sign-in form's own CSRF cookie (there is no session yet to hold a token).
SIGN_IN_COOKIE: Final = "aftercall_console_sign_in"
COOKIE_PATH: Final = "/console"
#: Seconds between comments on an idle live stream: a browser, or a proxy, that went away
#: is noticed when the write fails, and proxies do not close a quiet stream.
HEARTBEAT_SECONDS: Final = 15.0
#: Seconds between two checks that a live stream's session is still valid.
SESSION_RECHECK: Final = 5.0
#: How long a live render waits for the read models to fold what woke it (they follow
#: the log within ~0.1 s); past this it renders what they have.
PROJECTION_WAIT: Final = 2.0
#: The read models a conversation page shows.
PAGE_PROJECTIONS: Final = ("history", "conversations", "metrics", "console")
#: The most events the events page reads for one page (a type filter reads up to this
#: many and shows those that match: it never scans the whole log).
EVENTS_SCAN: Final = 2000
EVENTS_PAGE: Final = 100
#: Versions are 32-bit in the log (positions are 64-bit).
MAX_VERSION: Final = 2**31 - 2
MAX_QUERY_VALUE: Final = 200
CSRF_REFUSED: Final = "the form's CSRF token is missing or wrong: reload the page"

#: Endpoints anyone may reach (everything else needs a signed-in operator).
PUBLIC: Final = frozenset({"console.sign_in_form", "console.sign_in", "console.static"})

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

#: The fields each form may have, and how long each may be (every one has ``csrf``).
SIGN_IN_FIELDS: Final = {"name": 200, "password": 2048, "csrf": 100, "next": 500}
CSRF_ONLY: Final = {"csrf": 100}
CALL_FIELDS: Final = {"csrf": 100, "name": 120, "phone": 40, "summary": 2000}
MESSAGE_FIELDS: Final = {"csrf": 100, "name": 120, "phone": 40, "text": 1600}
#: An operator's hand: a reason for taking over or handing back, a message (four WhatsApp
#: messages at most, as the API takes), or ``template=1`` for the approved template.
CONTROL_FIELDS: Final = {"csrf": 100, "reason": 500}
OPERATOR_MESSAGE_FIELDS: Final = {"csrf": 100, "text": 4 * 1600, "template": 1}


class BadRequest(Exception):
    """Bad input: a 400 page (or 404 with ``status``) naming the problem."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# -- access -------------------------------------------------------------------------------
def _system() -> WebSystem:
    return current_system()


def _secure() -> bool:
    return _system().settings.public_base_url.startswith("https://")


def _client() -> str | None:
    return request.remote_addr


@console.before_request
async def require_operator() -> Response | None:
    if request.endpoint in PUBLIC:
        return None
    operator = await _system().operators.session(request.cookies.get(SESSION_COOKIE))
    if operator is None:
        if request.method == "GET" and request.endpoint != "console.live":
            target = request.full_path.rstrip("?") if request.query_string else request.path
            return _redirect(f"/console/sign-in?next={quote(target, safe='/')}", 303)
        return _refuse(401, "sign in first: this console is for signed-in operators only")
    g.operator = operator
    return None


def _operator() -> OperatorSession:
    operator: OperatorSession = g.operator
    return operator


async def _posted(fields: Mapping[str, int]) -> dict[str, str]:
    """The post's fields, once its CSRF token is the session's (403 otherwise, whatever
    else is wrong with it: a bad form without the token says nothing but "refused")."""
    body = await request.get_data(False, False, False)
    try:
        form = parse_form(request.content_type, body, fields)
    except FormError:
        if not _token_matches(csrf_in(body)):
            raise BadRequest(CSRF_REFUSED, 403) from None
        raise
    if not _token_matches(form.get("csrf", "")):
        raise BadRequest(CSRF_REFUSED, 403)
    return form


def _token_matches(token: str) -> bool:
    return secrets.compare_digest(token.encode(), _operator().csrf_token.encode())


def _redirect(location: str, status: int = 303) -> Response:
    """A redirect (303 after a post: the browser follows with a GET)."""
    return Response("", status=status, headers={"Location": location})


def _refuse(status: int, reason: str) -> Response:
    return Response(json.dumps({"error": reason}), status=status, mimetype="application/json")


@console.after_request
async def headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@console.errorhandler(BadRequest)
async def bad_request(error: BadRequest) -> tuple[str, int]:
    return await _page("console/error.html", status=error.status, reason=error.reason), error.status


@console.errorhandler(FormError)
async def bad_form(error: FormError) -> tuple[str, int]:
    return await _page("console/error.html", status=400, reason=str(error)), 400


async def _page(template: str, **context: Any) -> str:
    system = _system()
    operator: OperatorSession | None = g.get("operator")
    return await render_template(
        template,
        operator=operator,
        csrf=operator.csrf_token if operator else "",
        sandbox=system.sandbox_phone is not None,
        now=datetime.now(UTC),
        r=render,
        **context,
    )


# -- signing in and out -------------------------------------------------------------------
def _safe_next(target: str) -> str:
    """Where to go after signing in: a console page of this site, nothing else."""
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/console")
        or target.startswith("/console/sign-in")
        or "\\" in target
        or "//" in target
    ):
        return "/console"
    return target


async def _sign_in_page(
    status: int, *, message: str | None = None, name: str = "", next_: str = "/console"
) -> Response:
    token = secrets.token_urlsafe(32)
    body = await _page(
        "console/sign_in.html", message=message, name=name, next=_safe_next(next_), form_csrf=token
    )
    response = Response(body, status=status, mimetype="text/html")
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=3600,
        path=COOKIE_PATH,
        secure=_secure(),
        httponly=True,
        samesite="Strict",
    )
    return response


@console.get("/sign-in")
async def sign_in_form() -> Response:
    next_ = request.args.get("next", "/console")[:MAX_QUERY_VALUE]
    if await _system().operators.session(request.cookies.get(SESSION_COOKIE)) is not None:
        return _redirect(_safe_next(next_), 303)
    return await _sign_in_page(200, next_=next_)


@console.post("/sign-in")
async def sign_in() -> Response:
    try:
        form = parse_form(
            request.content_type, await request.get_data(False, False, False), SIGN_IN_FIELDS
        )
    except FormError as exc:
        return await _sign_in_page(400, message=str(exc))
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not expected or not secrets.compare_digest(form["csrf"].encode(), expected.encode()):
        return await _sign_in_page(
            403,
            message="This form expired or came from elsewhere: sign in again.",
            name=form["name"][:100],
            next_=form["next"],
        )
    outcome = await _system().operators.sign_in(
        form["name"].strip().lower(), form["password"], client=_client()
    )
    if not isinstance(outcome, SignedIn):
        status = 401 if outcome.reason == "wrong" else 429
        response = await _sign_in_page(
            status, message=outcome.message, name=form["name"][:100], next_=form["next"]
        )
        if outcome.retry_after:
            response.headers["Retry-After"] = str(max(1, round(outcome.retry_after)))
        return response
    response = _redirect(_safe_next(form["next"] or "/console"), 303)
    response.set_cookie(
        SESSION_COOKIE,
        outcome.token,
        max_age=max(1, int((outcome.session.expires_at - datetime.now(UTC)).total_seconds())),
        path=COOKIE_PATH,
        secure=_secure(),
        httponly=True,
        samesite="Lax",
    )
    response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
    return response


@console.post("/sign-out")
async def sign_out() -> Response:
    await _posted(CSRF_ONLY)
    await _system().operators.sign_out(request.cookies.get(SESSION_COOKIE, ""))
    response = _redirect("/console/sign-in", 303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, secure=_secure(), httponly=True)
    return response


# -- pages --------------------------------------------------------------------------------
def _models() -> ReadModels:
    runner = _system().projections
    if runner is None:
        raise BadRequest("the read models are not running in this process", 503)
    return runner.models


def _phone(raw: str) -> str:
    try:
        return identity_phone("+" + raw.strip().lstrip("+"))
    except (InvalidPhone, ValueError) as exc:
        raise BadRequest(f"{raw[:40]!r} is not a phone number: {exc}") from None


def _arg(name: str) -> str:
    value = request.args.get(name, "")
    if len(value) > MAX_QUERY_VALUE:
        raise BadRequest(f"{name} is longer than {MAX_QUERY_VALUE} characters")
    if "\x00" in value:  # no database stores one, and no search needs one
        raise BadRequest(f"{name} contains a NUL character")
    return value


def _position(name: str) -> int | None:
    raw = _arg(name).strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequest(f"{name} must be a log position (a whole number), not {raw[:40]!r}")
    return int(raw)


@console.get("")
@console.get("/")
async def overview() -> str:
    now = datetime.now(UTC)
    found = await console_queries.overview(_models(), now=now)
    hours = _chart_hours(found["since"], now)
    agent = {h.hour: h for h in found["agent_latency"]}
    added = {h.hour: h for h in found["added_latency"]}
    chart_agent = render.latency_chart(
        hours,
        [
            (f"p{q}", f"p{q}", {hour: getattr(h, f"p{q}") for hour, h in agent.items()})
            for q in (50, 95, 99)
        ],
    )
    chart_added = render.latency_chart(
        hours,
        [
            (f"p{q}", f"p{q}", {hour: getattr(h, f"p{q}") for hour, h in added.items()})
            for q in (50, 95, 99)
        ],
    )
    return await _page(
        "console/overview.html",
        found=found,
        chart_agent=chart_agent,
        chart_added=chart_added,
        failures=await console_queries.recent_failures(_models()),
        parked=await _parked(),
    )


async def _parked() -> list[ParkedEvent]:
    """Events a read model could not apply and went on without (``projections.parking``):
    what the overview, /readyz and ``projections status`` all say."""
    runner = current_system().projections
    return [] if runner is None else await runner.parked()


def _chart_hours(since: datetime, now: datetime) -> list[datetime]:
    first = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = []
    moment = first
    while moment <= now:
        hours.append(moment)
        moment = datetime.fromtimestamp(moment.timestamp() + 3600, UTC)
    return hours


@console.get("/conversations")
async def conversations() -> str:
    known = console_queries.states()
    wanted = [s for s in request.args.getlist("state") if s]
    if len(wanted) > len(known) or any(len(s) > 40 or "\x00" in s for s in wanted):
        raise BadRequest("too many, too long or malformed state filters")
    cursor_text = _arg("after")
    try:
        cursor = console_queries.Cursor.decode(cursor_text) if cursor_text else None
        page = await console_queries.conversation_list(
            _models(), wanted_states=wanted, search=_arg("q"), after=cursor
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return await _page(
        "console/conversations.html",
        page=page,
        states=known,
        wanted=wanted,
        q=_arg("q"),
        next_url=_next_url(page.next) if page.next else None,
    )


def _next_url(cursor: console_queries.Cursor) -> str:
    pairs = [("state", s) for s in request.args.getlist("state") if s]
    if request.args.get("q"):
        pairs.append(("q", request.args["q"]))
    pairs.append(("after", cursor.encode()))
    return "/console/conversations?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)


async def _caught_up(system: WebSystem, position: int | None = None) -> None:
    """Until the read models a page shows have folded the log up to ``position`` (its head
    by default), for at most `PROJECTION_WAIT`: right after an action, the page shows it."""
    runner = system.projections
    if runner is None:
        return
    with trio.move_on_after(PROJECTION_WAIT):
        target = position if position is not None else await system.store.head()
        await runner.wait_until(target, [n for n in PAGE_PROJECTIONS if n in runner.positions()])


@console.get("/conversations/<phone>")
async def conversation(phone: str) -> str:
    e164 = _phone(phone)
    try:
        detail = await console_queries.conversation_detail(_models(), e164)
    except NotFound as exc:
        # The log may hold it already (a call just recorded): give the read models a
        # moment before saying there is nothing.
        if not await _system().store.stream_version(phone_stream(e164)):
            raise BadRequest(str(exc), 404) from None
        await _caught_up(_system())
        try:
            detail = await console_queries.conversation_detail(_models(), e164)
        except NotFound:
            raise BadRequest(str(exc), 404) from None
    return await _page(
        "console/conversation.html",
        phone=e164,
        detail=detail,
        live_url=render.phone_url(e164) + "/live",
        template_sid=_system().settings.first_message_template_sid,
    )


@console.get("/conversations/<phone>/live")
async def live(phone: str) -> Response:
    """Server-Sent Events: the conversation's live part, rendered again whenever the log
    has something new for this phone (see ``web.console.live``)."""
    e164 = _phone(phone)
    after = _position("after")
    last_id = request.headers.get("Last-Event-ID", "").strip()
    if last_id.isascii() and last_id.isdigit() and len(last_id) <= 18:
        after = int(last_id)  # a reconnecting EventSource says where it was
    system = _system()
    models = _models()
    hub = _hub(system)
    token = request.cookies.get(SESSION_COOKIE, "")
    nursery: trio.Nursery = current_app.nursery  # type: ignore[attr-defined]
    # The stream outlives the request's context, so its templates are taken now and
    # rendered directly (they need nothing of the request). The generator is handed to
    # Quart as it is, which closes it when the page goes: wrapping it for the request's
    # context (stream_with_context) left it to the garbage collector instead.
    csrf = _operator().csrf_token  # the live part's take-over and hand-back forms carry it
    live_part = current_app.jinja_env.get_template("console/_live.html")
    one_message = current_app.jinja_env.get_template("console/_message.html")

    async def render_live(position: int, *, wait: bool = True) -> str:
        if wait:
            await _caught_up(system, position)
        try:
            detail = await console_queries.conversation_detail(models, e164)
        except NotFound:  # not in the read models yet: the next event brings it
            return ": nothing to show yet\n\n"
        html = await live_part.render_async(
            phone=e164, detail=detail, r=render, now=datetime.now(UTC), csrf=csrf
        )
        return _sse("timeline", html, detail.position)

    checked = trio.current_time()

    async def signed_out() -> bool:
        # Looked up again every few seconds, not on every event of a busy conversation:
        # a sign-out (or a removed operator) closes the page's stream within that time.
        nonlocal checked
        if trio.current_time() - checked < SESSION_RECHECK:
            return False
        checked = trio.current_time()
        return await system.operators.session(token) is None

    async def stream() -> AsyncIterator[str]:
        # One generator, no wrapper around it: Quart closes it when the page goes.
        try:
            async with hub.subscribe(e164, nursery) as subscription:
                yield "retry: 2000\n\n"
                if after is None or await system.store.head() > after:
                    yield await render_live(await system.store.head())
                owed: int | None = None  # a whole render owed up to this position ...
                due = 0.0  # ... by then at the latest, whatever the read models have
                while True:
                    if owed is None:
                        woke = await subscription.next(HEARTBEAT_SECONDS)
                        if woke is None:
                            if await signed_out():
                                yield "event: signed-out\ndata: \n\n"
                                return
                            yield ": still here\n\n"
                            continue
                    elif await _projected_or_woken(system, owed, subscription, due):
                        yield await render_live(owed, wait=False)
                        owed = None
                        continue
                    else:
                        woke = subscription.take()
                        assert woke is not None
                    if await signed_out():
                        yield "event: signed-out\ndata: \n\n"
                        return
                    position, events = woke
                    # New messages at once, from their events (see web.console.live); the
                    # whole part once the read models have folded them, without holding
                    # up the messages that come meanwhile.
                    for row in messages_from_log(events):
                        html = await one_message.render_async(
                            item=row, r=render, now=datetime.now(UTC)
                        )
                        yield _sse("new-message", html)
                    if owed is None:
                        due = trio.current_time() + PROJECTION_WAIT
                    owed = max(owed or 0, position)
        except EventStoreError as exc:
            # The database went away: end the stream; the browser's EventSource comes back
            # after the ``retry`` it was given, to a page rendered afresh.
            yield f": {type(exc).__name__}\n\n"

    response = Response(stream(), mimetype="text/event-stream")
    response.timeout = None  # open as long as the page is
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not hold the stream back
    return response


async def _projected_or_woken(
    system: WebSystem, position: int, subscription: Subscription, due: float
) -> bool:
    """True once the read models have folded up to ``position`` or ``due`` has passed
    (render everything now); False as soon as the subscription has news first."""
    runner = system.projections
    projected = False
    with trio.move_on_at(due) as timer:
        async with trio.open_nursery() as racing:

            async def fold() -> None:
                nonlocal projected
                if runner is not None:
                    names = [n for n in PAGE_PROJECTIONS if n in runner.positions()]
                    await runner.wait_until(position, names)
                projected = True
                racing.cancel_scope.cancel()

            async def news() -> None:
                await subscription.wait()
                racing.cancel_scope.cancel()

            racing.start_soon(fold)
            racing.start_soon(news)
    return projected or timer.cancelled_caught


def _sse(event: str, html: str, position: int | None = None) -> str:
    """One Server-Sent Event; its ``id`` (a position) is where a reconnection resumes."""
    data = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    head = f"id: {position}\n" if position is not None else ""
    return f"{head}event: {event}\n{data}\n"


def messages_from_log(events: list[RecordedEvent]) -> list[dict[str, Any]]:
    """The messages these events add to a conversation, as the history will have them
    (same ids, same fields), for showing before the read models have folded them."""
    rows: list[dict[str, Any]] = []
    for event in events:
        data = event.data
        if event.type == "MessageReceived":
            media = data.get("media")
            rows.append(
                _message_row(
                    str(data.get("message_sid")),
                    "inbound",
                    body=str(data.get("body") or ""),
                    message_sid=data.get("message_sid"),
                    status="received",
                    media_count=len(media) if isinstance(media, list) else 0,
                    created_at=time_of(data.get("received_at")),
                )
            )
        elif event.type == "ReplyRequested":
            template = data.get("template")
            if isinstance(template, dict):
                variables = template.get("variables") or {}
                bodies = [f"[template {template.get('content_sid')}] {variables}"]
            else:
                bodies = [str(part) for part in data.get("parts") or ()]
            for index, body in enumerate(bodies):
                rows.append(
                    _message_row(
                        f"{data.get('reply_id')}/{index}",
                        "outbound",
                        body=body,
                        kind=data.get("kind"),
                        part=index,
                        status="requested",
                        created_at=time_of(data.get("requested_at")),
                    )
                )
    return rows


def _message_row(message_id: str, direction: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(
        [
            "message_sid",
            "kind",
            "part",
            "body",
            "media_count",
            "status",
            "error_code",
            "error_message",
            "created_at",
            "sent_at",
            "delivered_at",
            "read_at",
            "failed_at",
            "agent_seconds",
            "added_seconds",
        ]
    )
    row.update(message_id=message_id, direction=direction, **values)
    return row


def _hub(system: WebSystem) -> LiveTail:
    hub: LiveTail | None = current_app.extensions.get("aftercall_console_live")
    if hub is None or hub.store is not system.store:
        hub = LiveTail(system.store)
        current_app.extensions["aftercall_console_live"] = hub
    return hub


@console.get("/events")
async def events() -> str:
    # Stream names hold no white space; a '+' typed into a URL arrives as one.
    stream = _arg("stream").strip().replace(" ", "+")
    type_ = _arg("type").strip()
    category = _arg("category").strip()
    after = _position("after")
    if type_ and not type_.isidentifier():
        raise BadRequest(f"type {type_[:40]!r} is not an event type name")
    if category and not (category.isidentifier() and category.islower()):
        raise BadRequest(f"category {category[:40]!r} is not a stream category")
    store = _system().store
    scanned_to: int | None = None
    try:
        if stream:
            validate_stream_name(stream)
            if after is not None and after > MAX_VERSION:
                raise BadRequest(f"a stream's versions go up to {MAX_VERSION}, not {after}")
            from_version = (after or 0) + 1
            found = await store.read_stream(stream, from_version, EVENTS_SCAN)
            scanned_to = found[-1].version if len(found) == EVENTS_SCAN else None
            listed = [e for e in found if not type_ or e.type == type_][:EVENTS_PAGE]
            if len(listed) == EVENTS_PAGE:
                scanned_to = listed[-1].version
        else:
            found = await store.read_all(
                after=after or 0, limit=EVENTS_SCAN, category=category or None
            )
            listed = [e for e in found if not type_ or e.type == type_][:EVENTS_PAGE]
            if len(listed) == EVENTS_PAGE:
                scanned_to = listed[-1].position
            elif len(found) == EVENTS_SCAN:
                scanned_to = found[-1].position
    except EventStoreError as exc:
        raise BadRequest(str(exc)) from None
    head = await store.head()
    return await _page(
        "console/events.html",
        listed=listed,
        stream=stream,
        type_=type_,
        category=category,
        after=after,
        scanned=len(found),
        head=head,
        next_url=_events_next(scanned_to) if scanned_to is not None else None,
        conversation=_conversation_of(stream),
    )


def _events_next(position: int) -> str:
    pairs = [(k, request.args[k]) for k in ("stream", "type", "category") if request.args.get(k)]
    pairs.append(("after", str(position)))
    return "/console/events?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)


def _conversation_of(stream: str) -> str | None:
    return render.stream_link(stream) if stream else None


@console.get("/calls")
async def calls() -> str:
    batch = _arg("batch").strip() or None
    before = _position("before")
    try:
        page = await console_queries.calls_page(_models(), batch_id=batch, before=before)
    except NotFound as exc:
        raise BadRequest(str(exc), 404) from None
    pairs = [("batch", batch)] if batch else []
    next_url = None
    if page.next is not None:
        pairs.append(("before", str(page.next)))
        next_url = "/console/calls?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)
    return await _page("console/calls.html", page=page, batch=batch, next_url=next_url)


# -- an operator's hand -------------------------------------------------------------------
# The same commands as the JSON API's (``followup.control``), by the signed-in operator.
# A refusal (another operator has it, the window is closed, the person opted out) is a page
# with its 4xx and the reason; success goes back to the conversation, which shows it.


@console.post("/conversations/<phone>/take-over")
async def take_over(phone: str) -> Response:
    form = await _posted(CONTROL_FIELDS)
    e164 = _phone(phone)
    done = await _control(
        control.take_over(
            _system().store, e164, _operator().name, form["reason"].strip() or None, _now()
        )
    )
    return await _acted(done)


@console.post("/conversations/<phone>/hand-back")
async def hand_back(phone: str) -> Response:
    form = await _posted(CONTROL_FIELDS)
    e164 = _phone(phone)
    done = await _control(
        control.hand_back(
            _system().store, e164, _operator().name, _now(), form["reason"].strip() or None
        )
    )
    return await _acted(done)


@console.post("/conversations/<phone>/messages")
async def operator_message(phone: str) -> Response:
    form = await _posted(OPERATOR_MESSAGE_FIELDS)
    e164 = _phone(phone)
    system = _system()
    text = form["text"].strip()
    if form["template"] not in ("", "1"):
        raise BadRequest("template must be 1 or left out")
    if form["template"] == "1":
        if text:
            raise BadRequest("either a message or the approved template, not both")
        settings = system.settings
        templates = control.TemplateSettings(settings.first_message_template_sid, settings.unnamed)
        action = control.request_operator_template(
            system.store, e164, _operator().name, templates, _now()
        )
    else:
        if not text:
            raise BadRequest("an empty message is not sent: write something first")
        action = control.request_operator_message(
            system.store, e164, _operator().name, text, _now()
        )
    return await _acted(await _control(action))


def _now() -> datetime:
    return datetime.now(UTC)


async def _control(action: Awaitable[control.Done]) -> control.Done:
    try:
        return await action
    except Refused as exc:
        raise BadRequest(exc.reason, exc.status) from None


async def _acted(done: control.Done) -> Response:
    """Wake the phone actor for what was recorded, then show the conversation with it."""
    system = _system()
    if not done.duplicate:
        system.notify_phone(done.phone, done.version, done.last)
    await _caught_up(system)
    return _redirect(render.phone_url(done.phone), 303)


# -- the sandbox's phone ------------------------------------------------------------------
def _sandbox() -> Any:
    phone = _system().sandbox_phone
    if phone is None:
        raise BadRequest(
            "the phone panel exists only in the sandbox (aftercall serve --sandbox)", 404
        )
    return phone


@console.get("/sandbox")
async def sandbox() -> str:
    _sandbox()
    return await _page("console/sandbox.html", phone=_arg("phone"))


@console.post("/sandbox/call")
async def sandbox_call() -> Response:
    form = await _posted(CALL_FIELDS)
    phone_panel = _sandbox()
    e164 = _phone(form["phone"])
    summary = form["summary"].strip()
    if not summary:
        raise BadRequest("a call needs a summary: what was said on the phone")
    name = form["name"].strip()
    await phone_panel.end_call(e164, name, summary)  # returns once the webhook is answered
    await _caught_up(_system())
    return _redirect(render.phone_url(e164), 303)


@console.post("/sandbox/message")
async def sandbox_message() -> Response:
    form = await _posted(MESSAGE_FIELDS)
    phone_panel = _sandbox()
    e164 = _phone(form["phone"])
    text = form["text"].strip()
    if not text:
        raise BadRequest("an empty message is not sent (WhatsApp sends none)")
    await phone_panel.customer_writes(e164, text, form["name"].strip() or "Sandbox customer")
    if request.headers.get("X-Requested-With") == "console":
        return Response("", status=204)  # the page's script posted it; the page stays
    await _caught_up(_system())
    return _redirect(render.phone_url(e164), 303)
