"""Fuzzing every route of the real app, served by Hypercorn on a real socket.

Signed and unsigned, well-formed and hostile requests go to the Twilio webhooks, the
ElevenLabs post-call webhook, the JSON API and the health routes; kept-alive connections
get a refused request and then another; raw sockets carry malformed HTTP. Every request
is checked by `tests.fuzz.probe.Prober` (an answer in time, never a 5xx, nothing recorded
for a 4xx); at the end every projection must reach the log's head.

Two kinds of test: Hypothesis tests that draw requests (seed fixed with ``derandomize``,
examples bounded by `strategies.FUZZ`, so a run is repeatable and takes a minute or two),
and ``test_named_*`` cases that send every hostile value of the strategies' pools once
(deep JSON, out-of-range numbers, wrong SIDs, odd API paths, 405/413 then another request
on the same connection, malformed HTTP), so those always run whatever Hypothesis draws.
Failures are reported, never expected away; the table of requests by route and status is
printed at the end of the run (``tests/fuzz/conftest.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, unquote, urlencode
from uuid import UUID

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from events.calls import call_event_id
from events.conversation import inbound_event_id, operator_message_event_id, status_event_id
from events.phones import identity_phone
from sandbox.twilio import sign
from tests.fuzz.live import ADMIN_TOKEN, WEBHOOK_SECRET, LiveAftercall, Server
from tests.fuzz.probe import (
    TALLY,
    Disconnected,
    FuzzFailure,
    NoAnswer,
    Prober,
    ServerError,
    raw_exchange,
    raw_sequence,
)
from tests.fuzz.strategies import (
    AUTHS,
    CONTROL_ACTIONS,
    CONTROL_FIELDS,
    CONTROL_PHONES,
    FORM,
    FUZZ,
    HOSTILE_CONTROL_BODIES,
    HOSTILE_ERROR_CODES,
    HOSTILE_JSON,
    HOSTILE_NUMBERS,
    HOSTILE_PHONES,
    HOSTILE_SIDS,
    HOSTILE_STRINGS,
    IDEMPOTENCY_KEYS,
    MALFORMED_HTTP,
    PHONE_SEGMENTS,
    QUERY_VALUES,
    ApiSpec,
    ControlSpec,
    FormSpec,
    HealthSpec,
    KeepAliveSpec,
    PostCallSpec,
    api_specs,
    control_specs,
    health_specs,
    inbound_forms,
    keep_alive_specs,
    malformed_http,
    post_call_specs,
    status_forms,
)
from tests.postgres_server import PostgresServer, new_schema_name, psql

CHUNK = 16 * 1024


def chunks(body: bytes, size: int = CHUNK) -> Iterator[bytes]:
    """The body as a generator: httpx sends it chunked, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


# -- Twilio ---------------------------------------------------------------------------------


def form_body(spec: FormSpec) -> bytes:
    body = urlencode(list(spec.pairs)).encode()
    match spec.spoil:
        case "raw-0xff":
            body += b"&Note=\xff\xfe"
        case "percent-ff":
            body += b"&Note=%FF%FE"
        case "cut-utf8":
            body += b"&Note=\xe2\x82"
        case "semicolons":
            body = body.replace(b"&", b";")
        case "300-fields":
            body += b"".join(b"&f%d=v" % i for i in range(300))
        case "none":
            pass
    return body


def twilio_signature(spec: FormSpec, live: LiveAftercall, body: bytes) -> str | None:
    """``X-Twilio-Signature`` as the spec asks: over PUBLIC_BASE_URL + path (+ query) and
    the parameters the server will parse from ``body``."""
    assert live.twilio is not None
    url = f"{live.public_url}{spec.path}" + (f"?{spec.query}" if spec.query else "")
    params = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    match spec.signing:
        case "missing":
            return None
        case "empty":
            return ""
        case "wrong":
            return "bm90IGEgc2lnbmF0dXJlIGF0IGFsbA=="
        case "wrong-token":
            return sign("0" * 32, url, params)
        case "other-url":
            return sign(live.twilio.auth_token, f"https://example.com{spec.path}", params)
        case "valid":
            return sign(live.twilio.auth_token, url, params)


def twilio_event_ids(spec: FormSpec) -> list[UUID]:
    """The ids an event recorded from this form would carry (ARCHITECTURE.md, invariant 7)."""
    sids = [v for n, v in spec.pairs if n == "MessageSid"]
    statuses = [v for n, v in spec.pairs if n in ("MessageStatus", "SmsStatus")]
    ids = [inbound_event_id(sid) for sid in sids]
    ids += [status_event_id(sid, status) for sid in sids for status in statuses]
    return ids


def send_form(prober: Prober, spec: FormSpec) -> None:
    live = prober.live
    body = form_body(spec)
    headers = {}
    signature = twilio_signature(spec, live, body)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    if spec.content_type:
        headers["Content-Type"] = spec.content_type
    url = spec.path + (f"?{spec.query}" if spec.query else "")
    with prober.client() as http:
        prober.request(
            http,
            "POST",
            url,
            route=f"POST {spec.path}",
            headers=headers,
            content=chunks(body) if spec.chunked else body,
            event_ids=twilio_event_ids(spec),
            describe=repr(spec),
        )


@FUZZ
@given(spec=inbound_forms())
def test_twilio_inbound_messages(prober: Prober, spec: FormSpec) -> None:
    send_form(prober, spec)


@FUZZ
@given(spec=status_forms())
def test_twilio_status_callbacks(prober: Prober, spec: FormSpec) -> None:
    send_form(prober, spec)


@settings(FUZZ, max_examples=30)
@given(
    path=st.sampled_from(
        ["/webhooks/twilio/whatsapp", "/webhooks/twilio/status", "/webhooks/elevenlabs/post-call"]
    ),
    size=st.sampled_from([65_537, 100_000, 300_000, 1_000_000, 17 * 1024 * 1024]),
    signed=st.booleans(),
    chunk=st.sampled_from([1_024, CHUNK, 65_536]),
)
def test_chunked_bodies_past_64_kib(
    prober: Prober, path: str, size: int, signed: bool, chunk: int
) -> None:
    """A body larger than any webhook's, sent chunked (no Content-Length to refuse it by)."""
    live = prober.live
    assert live.twilio is not None
    if size > 1_000_000:
        # 17 MiB in 1 KiB chunks is 17,000 writes: slow on the client's side alone.
        chunk = max(chunk, CHUNK)
    if path.startswith("/webhooks/twilio/"):
        body = b"Body=" + b"a" * (size - 5)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signed:
            params = parse_qsl(body.decode(), keep_blank_values=True)
            headers["X-Twilio-Signature"] = sign(
                live.twilio.auth_token, f"{live.public_url}{path}", params
            )
    else:
        body = b'{"type":"post_call_transcription","data":{"x":"' + b"a" * size + b'"}}'
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["ElevenLabs-Signature"] = elevenlabs_signature(body, int(time.time()))
    with prober.client() as http:
        prober.request(
            http,
            "POST",
            path,
            route=f"POST {path} (chunked > 64 KiB)",
            headers=headers,
            content=chunks(body, chunk),
            describe=f"chunked body of {size} bytes in {chunk}-byte chunks, signed={signed}",
        )


# -- ElevenLabs -----------------------------------------------------------------------------


def elevenlabs_signature(body: bytes, timestamp: int, secret: str = WEBHOOK_SECRET) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v0={digest.hexdigest()}"


def post_call_signature(spec: PostCallSpec, body: bytes) -> str | None:
    now = int(time.time())
    good = elevenlabs_signature(body, now)
    match spec.signing:
        case "valid":
            return good
        case "missing":
            return None
        case "wrong-secret":
            return elevenlabs_signature(body, now, "wsec_someone_else")
        case "stale":
            return elevenlabs_signature(body, now - 3_600)
        case "future":
            return elevenlabs_signature(body, now + 3_600)
        case "no-timestamp":
            return good.split(",", 1)[1]
        case "garbage":
            return "garbage=,,=,;"
        case "two-v0":
            return f"t={now},v0={'0' * 64},{good.split(',', 1)[1]}"
        case "v1-only":
            return good.replace("v0=", "v1=")
        case "other-body":
            return elevenlabs_signature(body + b" ", now)
        case "huge":
            return f"t={now},v0={'a' * 8_000}"
        case "empty-parts":
            return ",,,t=,v0=,"


@FUZZ
@given(spec=post_call_specs())
def test_elevenlabs_post_call(prober: Prober, spec: PostCallSpec) -> None:
    send_post_call(prober, spec)


def send_post_call(prober: Prober, spec: PostCallSpec) -> None:
    body = spec.body()
    headers = {}
    signature = post_call_signature(spec, body)
    if signature is not None:
        headers["ElevenLabs-Signature"] = signature
    if spec.content_type:
        headers["Content-Type"] = spec.content_type
    conversation_id = spec.conversation_id()
    with prober.client() as http:
        prober.request(
            http,
            "POST",
            "/webhooks/elevenlabs/post-call",
            route="POST /webhooks/elevenlabs/post-call",
            headers=headers,
            content=chunks(body) if spec.chunked else body,
            event_ids=[call_event_id(conversation_id)] if conversation_id else [],
            describe=repr(spec),
        )


# -- the JSON API and health ----------------------------------------------------------------


def authorization(spec: ApiSpec | ControlSpec) -> dict[str, str]:
    match spec.auth:
        case "valid":
            return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        case "missing":
            return {}
        case "wrong":
            return {"Authorization": "Bearer not-the-token"}
        case "basic":
            return {"Authorization": f"Basic {ADMIN_TOKEN}"}
        case "lowercase":
            return {"Authorization": f"bearer {ADMIN_TOKEN}"}
        case "padded":
            return {"Authorization": f"Bearer   {ADMIN_TOKEN}"}
        case "scheme-only":
            return {"Authorization": "Bearer"}
        case "prefix":
            return {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}
        case "longer":
            return {"Authorization": f"Bearer {ADMIN_TOKEN}x"}


@FUZZ
@given(spec=api_specs())
def test_api(prober: Prober, spec: ApiSpec) -> None:
    send_api(prober, spec)


def send_api(prober: Prober, spec: ApiSpec) -> None:
    url = spec.path + (f"?{urlencode(list(spec.query))}" if spec.query else "")
    with prober.client() as http:
        prober.request(
            http,
            spec.method,
            url,
            route=f"{spec.method} {spec.route}",
            headers=authorization(spec),
            describe=repr(spec),
        )


# -- the operators' routes: hand-off, operator message, resume ------------------------------


@pytest.fixture(scope="module")
def conversations(prober: Prober) -> tuple[str, ...]:
    """Conversations with `CONTROL_PHONES` (a signed inbound message from each), so the
    control routes answer by their rules (200/202/409/422) and not only 404."""
    for phone in CONTROL_PHONES:
        pairs = [
            ("MessageSid", _sid(f"control seed {phone}")),
            ("From", f"whatsapp:{phone}"),
            ("To", "whatsapp:+14155238886"),
            ("Body", "hello, I need a person"),
        ]
        send_form(prober, signed_form("/webhooks/twilio/whatsapp", pairs))
    return CONTROL_PHONES


def control_event_ids(spec: ControlSpec) -> list[UUID]:
    """The id an operator message with this ``Idempotency-Key`` would be recorded with
    (none without a usable key, or for a phone that is not one)."""
    if spec.action != "messages" or spec.idempotency_key is None:
        return []
    key = spec.idempotency_key.strip()
    if not key or len(key) > 200 or not (key.isascii() and key.isprintable()):
        return []
    try:
        phone = identity_phone("+" + unquote(spec.segment).strip().lstrip("+"))
    except ValueError:
        return []
    return [operator_message_event_id(phone, key)]


def send_control(prober: Prober, spec: ControlSpec) -> None:
    headers = authorization(spec)
    if spec.content_type:
        headers["Content-Type"] = spec.content_type
    if spec.idempotency_key is not None:
        headers["Idempotency-Key"] = spec.idempotency_key
    body = spec.content()
    with prober.client() as http:
        prober.request(
            http,
            spec.method,
            spec.path,
            route=f"{spec.method} /api/conversations/<phone>/{spec.action}",
            headers=headers,
            content=chunks(body) if spec.chunked else body,
            event_ids=control_event_ids(spec),
            describe=repr(spec),
        )


@FUZZ
@given(spec=control_specs())
def test_api_control(prober: Prober, conversations: tuple[str, ...], spec: ControlSpec) -> None:
    """Hand-off, operator messages and resume: a 4xx records nothing; a 2xx may append to
    the phone's stream (then the phone counts as touched, as for any accepted request)."""
    send_control(prober, spec)


@settings(FUZZ, max_examples=40)
@given(spec=health_specs())
def test_health(prober: Prober, spec: HealthSpec) -> None:
    with prober.client() as http:
        base = spec.path.split("?")[0]
        route = f"{spec.method} {base if base in ('/healthz', '/readyz') else '<other path>'}"
        outcome = prober.request(http, spec.method, spec.path, route=route, describe=repr(spec))
    if spec.method == "GET" and spec.path in ("/healthz", "/readyz"):
        assert outcome.status == 200, f"{spec}: {outcome.status} {outcome.body[:300]!r}"


# -- kept-alive connections -----------------------------------------------------------------


def follow_up_request(
    prober: Prober, spec: KeepAliveSpec
) -> tuple[str, str, dict[str, str], bytes]:
    """The small, well-formed request sent after the refused one: method, path, headers,
    body."""
    live = prober.live
    assert live.twilio is not None
    if spec.then == "GET /healthz":
        return "GET", "/healthz", {}, b""
    if spec.then == "GET /api/metrics":
        return "GET", "/api/metrics", {"Authorization": f"Bearer {ADMIN_TOKEN}"}, b""
    sid = "SM" + hashlib.sha256(repr(spec).encode()).hexdigest()[:32]
    params = [("MessageSid", sid), ("MessageStatus", "delivered"), ("To", "+15551230001")]
    path = "/webhooks/twilio/status"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sign(live.twilio.auth_token, f"{live.public_url}{path}", params),
    }
    return "POST", path, headers, urlencode(params).encode()


def raw_request(
    method: str, path: str, headers: dict[str, str], body: bytes, chunked: bool
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks(body)) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + payload


@settings(FUZZ, max_examples=80)
@given(spec=keep_alive_specs())
def test_keep_alive_after_a_refused_request(prober: Prober, spec: KeepAliveSpec) -> None:
    """A request the app answers without reading its body (405, 413, an unsigned webhook),
    then another on the same kept-alive connection: both must be answered."""
    keep_alive(prober, spec)


def keep_alive(prober: Prober, spec: KeepAliveSpec) -> None:
    body = b"a" * spec.body_size
    headers = {"Content-Type": spec.content_type}
    method, path, next_headers, next_body = follow_up_request(prober, spec)
    # Any method: the first request is there to be refused; its method shows in the status.
    first_route = f"any {spec.path} (kept-alive, 1st)"
    second_route = f"{spec.then} (kept-alive, 2nd)"
    if spec.transport == "raw":
        second_route = f"{spec.then} (kept-alive, 2nd, raw socket)"
        answers = raw_sequence(
            prober.live.port,
            [
                raw_request(spec.method, spec.path, headers, body, spec.chunked),
                raw_request(method, path, next_headers, next_body, False),
            ],
        )
        for route, answer in zip((first_route, second_route), answers, strict=False):
            TALLY.add(route, answer.label)
            what = f"{route}: {spec!r}"
            if answer.timed_out:
                prober.ensure_alive(what)
                raise NoAnswer(f"{what}: no answer within the timeout (got {answer.head!r})")
            if answer.closed:
                raise Disconnected(f"{what}: the connection closed without an answer")
            assert answer.status is not None
            if answer.status >= 500:
                raise ServerError(f"{what}: answered {answer.head!r}")
        return
    with prober.client() as http:
        prober.request(
            http,
            spec.method,
            spec.path,
            route=first_route,
            headers=headers,
            content=chunks(body) if spec.chunked else body,
            describe=repr(spec),
        )
        prober.request(
            http,
            method,
            path,
            route=second_route,
            headers=next_headers,
            content=next_body or None,
            describe=f"next on the connection of {spec!r}",
        )


# -- a server that has just started --------------------------------------------------------


def test_api_as_the_server_starts(postgres: PostgresServer) -> None:
    """The API and health the moment the server listens (a dashboard polling through a
    restart): the read models may not be ready yet, which is a 503, never a 500."""
    schema = new_schema_name()
    server = Server(postgres.dsn, schema)
    try:
        prober = Prober(server)
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        failures: list[str] = []
        with prober.client() as http:
            for path in (
                "/api/conversations",
                "/api/conversations/%2B15551230001",
                "/api/metrics",
                "/readyz",
            ):
                try:
                    prober.request(
                        http, "GET", path, route=f"GET {path} (just started)", headers=auth
                    )
                except FuzzFailure as exc:
                    failures.append(str(exc))
        if failures:
            raise FuzzFailure("\n\n".join(failures))
    finally:
        try:
            server.close()
        finally:
            psql(postgres.dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- malformed HTTP -------------------------------------------------------------------------


#: Sends of each malformed payload: the worker-killing race below is lost about one time
#: in three, so one send would let it pass unseen most runs.
RAW_REPEATS = 4


@settings(FUZZ, max_examples=80)
@given(payload=malformed_http())
def test_malformed_http(prober: Prober, payload: bytes) -> None:
    """Bytes that are not (quite) HTTP/1.1: answered (never 5xx) or the connection closed,
    within the timeout; and the server still answers on a new connection."""
    malformed(prober, payload)


def malformed(prober: Prober, payload: bytes) -> None:
    what = f"raw {payload[:200]!r} ({len(payload)} bytes)"
    for _ in range(RAW_REPEATS):
        try:
            answer = raw_exchange(prober.live.port, payload)
        except OSError as exc:  # refused: the server is gone
            prober.ensure_alive(f"{what} ({exc})")
            raise
        TALLY.add("raw malformed HTTP", answer.label)
        if answer.timed_out:
            prober.ensure_alive(what)
            raise NoAnswer(f"{what}: neither an answer nor a close within the timeout")
        if answer.status is not None and answer.status >= 500:
            raise ServerError(f"{what}: answered {answer.head!r}")
    prober.ensure_alive(what)


# -- named cases: every hostile value of the pools, once each ---------------------------------
#
# Hypothesis draws from these pools; here each value is sent once, signed, on its own, so the
# cases the suite names are always run (a failing explicit example would also stop
# Hypothesis from generating anything else).


def signed_form(path: str, pairs: list[tuple[str, str]]) -> FormSpec:
    return FormSpec(
        path=path,
        pairs=tuple(pairs),
        signing="valid",
        content_type=FORM,
        spoil="none",
        chunked=False,
        query="",
    )


def _sid(seed: str) -> str:
    return "SM" + hashlib.sha256(seed.encode()).hexdigest()[:32]


@pytest.mark.parametrize("code", HOSTILE_ERROR_CODES, ids=lambda c: repr(c)[:30])
def test_named_error_codes(prober: Prober, code: str) -> None:
    """A signed status callback whose ErrorCode is out of range or not a number."""
    pairs = [
        ("MessageSid", _sid(f"error-code {code}")),
        ("MessageStatus", "failed"),
        ("To", "whatsapp:+15551230001"),
        ("ErrorCode", code),
    ]
    send_form(prober, signed_form("/webhooks/twilio/status", pairs))


@pytest.mark.parametrize("count", HOSTILE_NUMBERS, ids=lambda c: repr(c)[:30])
def test_named_num_media(prober: Prober, count: str) -> None:
    """A signed inbound message whose NumMedia is out of range or not a number."""
    pairs = [
        ("MessageSid", _sid(f"num-media {count}")),
        ("From", "whatsapp:+15551230002"),
        ("Body", "hello"),
        ("NumMedia", count),
        ("MediaUrl0", "https://api.twilio.com/ME0"),
    ]
    send_form(prober, signed_form("/webhooks/twilio/whatsapp", pairs))


@pytest.mark.parametrize(
    ("field", "value"),
    [("MessageSid", s) for s in HOSTILE_SIDS] + [("From", p) for p in HOSTILE_PHONES],
    ids=lambda v: repr(v)[:30],
)
def test_named_sids_and_phones(prober: Prober, field: str, value: str) -> None:
    """A signed inbound message with a wrong SID or phone number."""
    fields = {"MessageSid": _sid(f"{field} {value}"), "From": "whatsapp:+15551230002"}
    fields[field] = value
    pairs = [*fields.items(), ("Body", "hello")]
    send_form(prober, signed_form("/webhooks/twilio/whatsapp", pairs))


@pytest.mark.parametrize("raw", HOSTILE_JSON, ids=lambda b: repr(b)[:30])
def test_named_post_call_bodies(prober: Prober, raw: bytes) -> None:
    """A signed post-call webhook whose body no JSON encoder writes."""
    send_post_call(prober, PostCallSpec(None, raw, "valid", "application/json", False))


@pytest.mark.parametrize(
    "path",
    [f"/api/conversations/{s}" for s in PHONE_SEGMENTS]
    + [f"/api/conversations?{n}={quote(v)}" for n in ("limit", "state") for v in QUERY_VALUES]
    + [f"/api/conversations/%2B15551230001?messages={quote(v)}" for v in QUERY_VALUES],
    ids=lambda p: p[:60],
)
def test_named_api_paths(prober: Prober, path: str) -> None:
    """The API with odd phone segments and query values, with the admin token."""
    with prober.client() as http:
        prober.request(
            http,
            "GET",
            path,
            route="GET /api/conversations/<phone>" if "s/" in path else "GET /api/conversations",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )


def control_spec(
    action: str,
    *,
    phone: str = CONTROL_PHONES[0],
    segment: str | None = None,
    body: object = None,
    raw: bytes | None = None,
    auth: str = "valid",
    key: str | None = None,
) -> ControlSpec:
    return ControlSpec(
        method="POST",
        action=action,
        segment=segment if segment is not None else quote(phone, safe=""),
        auth=auth,  # type: ignore[arg-type]
        body=body,
        raw=raw,
        content_type="application/json",
        idempotency_key=key,
        chunked=False,
    )


@pytest.mark.parametrize("action", CONTROL_ACTIONS)
@pytest.mark.parametrize("raw", HOSTILE_CONTROL_BODIES, ids=lambda b: repr(b)[:30])
def test_named_control_bodies(
    prober: Prober, conversations: tuple[str, ...], action: str, raw: bytes
) -> None:
    """Each control route with a body no JSON encoder writes (or not JSON, or not an
    object), with the token and a phone that has a conversation."""
    send_control(prober, control_spec(action, phone=CONTROL_PHONES[2], raw=raw))


@pytest.mark.parametrize(
    ("action", "field", "value"),
    [(a, f, v) for a in CONTROL_ACTIONS for f in CONTROL_FIELDS[a] for v in HOSTILE_STRINGS],
    ids=lambda v: repr(v)[:30],
)
def test_named_control_fields(
    prober: Prober, conversations: tuple[str, ...], action: str, field: str, value: str
) -> None:
    """Each field of each control route at and past its limits, empty, with a NUL or a
    lone surrogate."""
    body = {"text": "hello"} if action == "messages" else {}
    body[field] = value
    send_control(prober, control_spec(action, phone=CONTROL_PHONES[2], body=body))


@pytest.mark.parametrize("action", CONTROL_ACTIONS)
@pytest.mark.parametrize("segment", PHONE_SEGMENTS, ids=lambda s: s[:40])
def test_named_control_phones(
    prober: Prober, conversations: tuple[str, ...], action: str, segment: str
) -> None:
    body = {"text": "hello"} if action == "messages" else None
    send_control(prober, control_spec(action, segment=segment, body=body))


@pytest.mark.parametrize("action", CONTROL_ACTIONS)
@pytest.mark.parametrize("auth", sorted(set(AUTHS)))
def test_named_control_auth(
    prober: Prober, conversations: tuple[str, ...], action: str, auth: str
) -> None:
    body = {"text": "hello"} if action == "messages" else {"reason": "operator"}
    send_control(prober, control_spec(action, phone=CONTROL_PHONES[1], body=body, auth=auth))


@pytest.mark.parametrize("key", IDEMPOTENCY_KEYS, ids=repr)
def test_named_idempotency_keys(prober: Prober, conversations: tuple[str, ...], key: str) -> None:
    """An operator message with odd ``Idempotency-Key`` headers (one sent twice)."""
    send_control(
        prober, control_spec("messages", phone=CONTROL_PHONES[1], body={"text": "hi"}, key=key)
    )


@pytest.mark.parametrize(
    "path",
    [f"/api/optouts?{n}={quote(v)}" for n in ("all", "limit") for v in QUERY_VALUES]
    + [f"/api/conversations?waiting={quote(v)}" for v in QUERY_VALUES],
    ids=lambda p: p[:60],
)
def test_named_optouts_and_waiting(prober: Prober, path: str) -> None:
    """``GET /api/optouts`` and ``?waiting=`` with odd query values, with the token."""
    with prober.client() as http:
        prober.request(
            http,
            "GET",
            path,
            route="GET " + path.split("?")[0],
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )


KEEP_ALIVE_CASES = [
    KeepAliveSpec("PUT", "/webhooks/twilio/whatsapp", 700_000, False, FORM, "GET /healthz", "raw"),
    KeepAliveSpec("POST", "/webhooks/twilio/whatsapp", 700_000, False, FORM, "GET /healthz", "raw"),
    KeepAliveSpec("POST", "/webhooks/twilio/whatsapp", 300_000, True, FORM, "GET /healthz", "raw"),
    KeepAliveSpec("PUT", "/healthz", 10, False, "text/plain", "GET /healthz", "httpx"),
    KeepAliveSpec("PUT", "/healthz", 100_000, False, "text/plain", "GET /healthz", "httpx"),
    KeepAliveSpec(
        "POST", "/webhooks/twilio/whatsapp", 100_000, False, FORM, "GET /healthz", "httpx"
    ),
]


@pytest.mark.parametrize("spec", KEEP_ALIVE_CASES, ids=repr)
def test_named_keep_alive(prober: Prober, spec: KeepAliveSpec) -> None:
    """405 and 413 (and an unsigned webhook) with a body, then the next request on the same
    connection."""
    keep_alive(prober, spec)


@pytest.mark.parametrize("payload", MALFORMED_HTTP, ids=lambda b: repr(b)[:40])
def test_named_malformed_http(prober: Prober, payload: bytes) -> None:
    malformed(prober, payload)


# -- at the end -----------------------------------------------------------------------------


def test_zz_every_projection_reaches_the_log_head(prober: Prober) -> None:
    """Last in the module: whatever was accepted above is projected, and no rejected
    request's event is in the log."""
    live = prober.live
    system, store = live.system, live.store
    assert system is not None
    assert store is not None
    runner = system.projections
    assert runner is not None
    crashes = prober.server.crashes

    async def settle() -> int:
        # The actors are still answering accepted messages: wait for the log to be quiet.
        head = await store.head()
        while True:
            await trio.sleep(1.0)
            now = await store.head()
            if now == head:
                return head
            head = now

    head = live.call(settle, timeout=60)

    async def caught_up() -> bool:
        with trio.move_on_after(20):
            await runner.wait_until(head)
            return True
        return False

    behind = not live.call(caught_up, timeout=30)
    problems: list[str] = []
    if behind:
        rows = "\n".join(
            f"  {s.name}: position {s.position} of {head}, last error: {s.last_error}"
            for s in runner.statistics()
        )
        problems.append(f"projections did not reach the log's head ({head}) in 20 s:\n{rows}")
    recorded = {e.event_id for e in prober.events_after(0)}
    leaked = {
        event_id: what
        for event_id, what in prober.rejected_ids.items()
        if event_id in recorded and event_id not in prober.accepted_ids
    }
    if leaked:
        listed = "\n".join(f"  {i}: {w[:300]}" for i, w in leaked.items())
        problems.append(f"events of rejected requests are in the log:\n{listed}")
    if crashes:
        problems.append(
            f"the server died {len(crashes)} time(s) during the suite:\n" + "\n".join(crashes)
        )
    if problems:
        raise FuzzFailure("\n".join(problems))
