"""The console over HTTP, against the real app in sandbox mode: who may see what, what a
bad request gets, and the live stream (the browser tests cover what a person sees)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest
import trio

from events.batches import BatchFinished, BatchSeen, RecipientSettled, batch_stream
from events.calls import CallFailed, call_event_id
from events.codec import to_new_event
from events.conversation import delivery_stream, phone_stream
from events.operators import operator_stream
from events.store import EventStore, RecordedEvent
from tests.console.harness import (
    OPERATOR,
    PASSWORD,
    Console,
    csrf_of,
    event_stream,
    running_console,
)
from tests.projections.test_parking import unreadable_time
from web.console import views
from web.console.views import PUBLIC, SESSION_COOKIE

PHONE = "+15557770001"


def _console_routes(console: Console) -> list[tuple[str, str]]:
    """Every console route and method but the public ones, with a phone for parameters."""
    app = console.app
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/console") or rule.endpoint in PUBLIC:
            continue
        path = rule.rule.replace("<phone>", "%2B15557770001")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, path))
    return found


async def test_every_page_and_action_refuses_anyone_not_signed_in(console: Console) -> None:
    routes = _console_routes(console)
    methods = {method for method, _ in routes}
    assert methods == {"GET", "POST"}
    assert {path for _, path in routes} >= {
        "/console",
        "/console/conversations",
        "/console/conversations/%2B15557770001",
        "/console/conversations/%2B15557770001/live",
        "/console/events",
        "/console/calls",
        "/console/sandbox",
        "/console/sandbox/call",
        "/console/sandbox/message",
        "/console/sign-out",
    }
    async with console.client() as client:
        for method, path in routes:
            answer = await client.request(method, path, data={"csrf": "x"})
            if method == "GET" and not path.endswith("/live"):
                assert answer.status_code == 303, (method, path)
                assert answer.headers["location"].startswith("/console/sign-in?next=/console")
            else:
                assert answer.status_code == 401, (method, path, answer.text)
                assert "sign in" in answer.json()["error"]
        # A forged or stale cookie is no better.
        client.cookies.set(SESSION_COOKIE, "forged-token", path="/console")
        assert (await client.get("/console")).status_code == 303
    events = await console.store.read_all(limit=10_000)
    assert not [e for e in events if e.stream.startswith("phone-")]  # no action did anything


async def test_signing_in_and_out(console: Console) -> None:
    async with console.client() as client:
        form = await client.get("/console/sign-in?next=/console/calls")
        assert form.status_code == 200
        sign_in_cookie = form.headers["set-cookie"]
        assert "HttpOnly" in sign_in_cookie
        assert "SameSite=Strict" in sign_in_cookie
        token = csrf_of(form.text)

        wrong = await client.post(
            "/console/sign-in",
            data={"name": OPERATOR, "password": "not the password", "csrf": token, "next": ""},
        )
        assert wrong.status_code == 401
        assert "Wrong name or password." in wrong.text
        assert f"{SESSION_COOKIE}=" not in wrong.headers.get("set-cookie", "")

        token = csrf_of(wrong.text)
        right = await client.post(
            "/console/sign-in",
            data={"name": "Ana", "password": PASSWORD, "csrf": token, "next": "/console/calls"},
        )
        assert right.status_code == 303
        assert right.headers["location"] == "/console/calls"
        cookie = SimpleCookie()
        (header,) = [
            h for h in right.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}=")
        ]
        cookie.load(header)
        session = cookie[SESSION_COOKIE]
        assert session["httponly"] is True
        assert session["samesite"] == "Lax"
        assert session["path"] == "/console"
        assert not session["secure"]  # PUBLIC_BASE_URL is http here
        assert (await client.get("/console/calls")).status_code == 200

        page = await client.get("/console")
        await client.post("/console/sign-out", data={"csrf": csrf_of(page.text)})
        assert (await client.get("/console")).status_code == 303
    types = [e.type for e in await console.store.read_stream(operator_stream(OPERATOR))]
    assert types[-3:] == ["OperatorSignInRefused", "OperatorSignedIn", "OperatorSignedOut"]


async def test_a_post_without_the_right_csrf_token_is_refused(console: Console) -> None:
    async with console.client() as client:
        await console.signed_in(client)
        for data in ({}, {"csrf": "not-the-token"}):
            refused = await client.post("/console/sign-out", data=data)
            assert refused.status_code == 403
            assert "CSRF" in refused.text
            refused = await client.post(
                "/console/sandbox/message", data={**data, "phone": PHONE, "text": "hi"}
            )
            assert refused.status_code == 403
        assert (await client.get("/console")).status_code == 200  # still signed in
        # The sign-in form's own token must match its cookie.
        other = httpx.AsyncClient(base_url=console.url)
        async with other:
            forged = await other.post(
                "/console/sign-in",
                data={"name": OPERATOR, "password": PASSWORD, "csrf": "guess", "next": ""},
            )
            assert forged.status_code == 403
            assert f"{SESSION_COOKIE}=" not in forged.headers.get("set-cookie", "")
    assert not await console.store.read_stream(phone_stream(PHONE))


async def test_wrong_passwords_are_slowed_down_over_http(console: Console) -> None:
    async with console.client() as client:
        answers = []
        for attempt in range(5):
            form = await client.get("/console/sign-in")
            answer = await client.post(
                "/console/sign-in",
                data={"name": OPERATOR, "password": f"wrong {attempt}", "csrf": csrf_of(form.text)},
            )
            answers.append(answer)
        assert [a.status_code for a in answers] == [401, 401, 401, 429, 429]
        assert "wait" in answers[3].text
        assert int(answers[3].headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/console/conversations/not-a-phone", 400, "not a phone number"),
        ("/console/conversations/%2B15550009999", 404, "no conversation"),
        ("/console/conversations?state=bogus", 400, "unknown state"),
        ("/console/conversations?after=yesterday", 400, "cursor"),
        ("/console/conversations?q=" + "x" * 300, 400, "longer than"),
        ("/console/events?after=12abc", 400, "log position"),
        ("/console/events?stream=Not%20A%20Stream", 400, "category-id"),
        ("/console/events?type=Bad-Type", 400, "event type"),
        ("/console/events?category=Phone", 400, "stream category"),
        ("/console/calls?batch=btcal_nope", 404, "no batch"),
        ("/console/calls?before=-1", 400, "log position"),
        ("/console/conversations/%2B1555/live", 400, "not a phone number"),
        ("/console/conversations?q=%00", 400, "NUL"),
        ("/console/conversations?state=%00", 400, "malformed state"),
        ("/console/conversations?after=0001-01-01T00:00:00%2B14:00~%2B15551234567", 400, "cursor"),
        ("/console/events?stream=phone-%2B1&after=999999999999999999", 400, "versions go up to"),
        ("/console/events?after=9999999999999999999", 400, "log position"),
        ("/console/conversations/%00", 400, "not a phone number"),
    ],
)
async def test_bad_input_gets_a_reason_never_a_500(
    console: Console, path: str, status: int, reason: str
) -> None:
    async with console.client() as client:
        await console.signed_in(client)
        answer = await client.get(path)
        assert answer.status_code == status, answer.text
        assert reason in answer.text


async def test_bad_posts_get_a_reason(console: Console) -> None:
    async with console.client() as client:
        token = await console.signed_in(client)
        cases = [
            ({"csrf": token, "phone": "nope", "text": "hi"}, "not a phone number"),
            ({"csrf": token, "phone": PHONE, "text": "   "}, "empty message"),
            ({"csrf": token, "phone": PHONE, "text": "hi", "extra": "1"}, "unexpected field"),
            ({"csrf": token, "phone": PHONE, "text": "x" * 2000}, "longer than"),
        ]
        for data, reason in cases:
            answer = await client.post("/console/sandbox/message", data=data)
            assert answer.status_code == 400, data
            assert reason in answer.text
        raw = await client.post(
            "/console/sandbox/message",
            content=json.dumps({"csrf": token}),
            headers={"content-type": "application/json"},
        )
        assert raw.status_code == 403  # no form, so no token: refused, whatever else is wrong
        assert "CSRF" in raw.text
        wrong_type = await client.post(
            "/console/sandbox/message",
            content=f"csrf={token}&phone=%2B15557770001&text=hi".encode(),
            headers={"content-type": "text/plain"},
        )
        assert wrong_type.status_code == 400
        assert "x-www-form-urlencoded" in wrong_type.text
        bad_utf8 = await client.post(
            "/console/sandbox/call",
            content=b"csrf=" + token.encode() + b"&name=%FF",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert bad_utf8.status_code == 400
        no_summary = await client.post(
            "/console/sandbox/call", data={"csrf": token, "phone": PHONE, "summary": ""}
        )
        assert no_summary.status_code == 400
    assert not await console.store.read_stream(phone_stream(PHONE))


async def test_an_operators_hand_is_refused_with_a_reason_and_records_nothing(
    console: Console,
) -> None:
    """Take-over, hand-back and operator messages from the console: each refusal is a 4xx
    page saying why (the window, another operator, nothing to hand back, a bad form), and
    the log holds nothing it refused."""
    phone_panel = console.system.sandbox_phone
    assert phone_panel is not None
    base = f"/console/conversations/%2B{PHONE[1:]}"
    async with console.client() as client:
        token = await console.signed_in(client)
        missing = await client.post(f"{base}/take-over", data={"csrf": token})
        await phone_panel.end_call(PHONE, "Ana", "A refund.")
        await console.wait_for(lambda e: e.type == "ReplySent" and e.stream == phone_stream(PHONE))
        closed = await client.post(f"{base}/messages", data={"csrf": token, "text": "Hi"})
        both = await client.post(
            f"{base}/messages", data={"csrf": token, "text": "Hi", "template": "1"}
        )
        empty = await client.post(f"{base}/messages", data={"csrf": token, "text": "  "})
        nothing_to_hand_back = await client.post(f"{base}/hand-back", data={"csrf": token})
        forged = await client.post(f"{base}/take-over", data={"csrf": "forged"})
        refused_only = await console.store.read_stream(phone_stream(PHONE))
        took = await client.post(f"{base}/take-over", data={"csrf": token, "reason": "mine"})
        events = await console.store.read_stream(phone_stream(PHONE))

    assert (missing.status_code, "no conversation" in missing.text) == (404, True)
    assert (closed.status_code, "24-hour" in closed.text) == (422, True)
    assert (both.status_code, "not both" in both.text) == (400, True)
    assert (empty.status_code, "empty message" in empty.text) == (400, True)
    assert nothing_to_hand_back.status_code == 409
    assert "nothing to hand back" in nothing_to_hand_back.text
    assert forged.status_code == 403
    operators = {"HumanTookOver", "HandedBack", "OperatorMessageRequested"}
    assert not [e.type for e in refused_only if e.type in operators]
    assert (took.status_code, took.headers["location"]) == (303, base)
    [taken] = [e for e in events if e.type == "HumanTookOver"]
    assert (taken.data["operator"], taken.data["reason"]) == ("ana", "mine")


async def test_pages_carry_a_content_security_policy(console: Console) -> None:
    async with console.client() as client:
        await console.signed_in(client)
        page = await client.get("/console")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-frame-options"] == "DENY"


async def test_the_live_stream_brings_a_new_message_within_a_second(console: Console) -> None:
    async with console.client() as client:
        token = await console.signed_in(client)
        await client.post(
            "/console/sandbox/call",
            data={"csrf": token, "name": "Ana", "phone": PHONE, "summary": "A refund."},
        )
        await console.wait_for(lambda e: e.type == "ReplySent" and e.stream == phone_stream(PHONE))
        await console.projected()
        page = await client.get(f"/console/conversations/%2B{PHONE[1:]}")
        position = page.text.split('data-position="', 1)[1].split('"', 1)[0]
        url = f"/console/conversations/%2B{PHONE[1:]}/live?after={position}"
        async with event_stream(console.url, url, client.cookies) as stream:
            await stream.until("retry: 2000")
            sent_at = trio.current_time()
            await console.system.sandbox_phone.customer_writes(  # type: ignore[union-attr]
                PHONE, "Is it <b>Friday</b>?", "Ana"
            )
            await stream.until("Is it &lt;b&gt;Friday&lt;/b&gt;?", within=5)
            elapsed = trio.current_time() - sent_at
    assert elapsed < 1.0, elapsed


async def test_the_banner_says_where_to_sign_in(console: Console) -> None:
    text = "\n".join(console.banner)
    assert f"{console.url}/console" in text
    assert "sign in as: sandbox / " in text
    password = text.split("sign in as: sandbox / ", 1)[1].split()[0]
    assert "ElevenLabs stand-in: http://127.0.0.1:" in text
    async with console.client() as client:
        await console.signed_in(client, "sandbox", password)


def _post_call_body(conversation_id: str, phone: str, summary: str) -> bytes:
    return json.dumps(
        {
            "type": "post_call_transcription",
            "event_timestamp": int(time.time()),
            "data": {
                "agent_id": "agent_sandbox",
                "conversation_id": conversation_id,
                "status": "done",
                "transcript": [],
                "metadata": {
                    "phone_call": {
                        "type": "twilio",
                        "external_number": phone,
                        "direction": "outbound",
                    }
                },
                "analysis": {"transcript_summary": summary},
            },
        }
    ).encode()


async def test_a_duplicate_post_call_with_other_content_is_logged(
    console: Console, caplog: pytest.LogCaptureFixture
) -> None:
    """The stand-ins reused conversation ids across runs: the second run's call to another
    phone was dropped as a duplicate without a word. It is still not recorded (the id is
    taken), but it is logged and the answer says so."""
    caplog.set_level(logging.WARNING, logger="web.post_call")
    secret = console.system.settings.elevenlabs_webhook_secret
    assert secret is not None

    async def deliver(body: bytes) -> httpx.Response:
        stamp = str(int(time.time()))
        signature = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        async with console.client() as client:
            return await client.post(
                "/webhooks/elevenlabs/post-call",
                content=body,
                headers={"ElevenLabs-Signature": f"t={stamp},v0={signature.hexdigest()}"},
            )

    first = await deliver(_post_call_body("conv_reused", PHONE, "First."))
    assert first.json()["status"] == "recorded", first.text
    same = await deliver(_post_call_body("conv_reused", PHONE, "First."))
    assert same.json() == {**first.json(), "status": "duplicate"}
    assert "repeats a call" not in caplog.text
    other = await deliver(_post_call_body("conv_reused", "+15557770002", "Another call."))
    answer = other.json()
    assert answer["status"] == "duplicate"
    assert "recorded for +15557770001, this one is for +15557770002" in answer["differs"]
    assert "repeats a call already recorded under that id, with other content" in caplog.text
    events = await console.store.read_stream(phone_stream(PHONE))
    assert [e.event_id for e in events if e.type == "CallCompleted"] == [
        call_event_id("conv_reused")
    ]


async def test_a_second_sandbox_run_on_the_same_log_records_its_calls(
    store: EventStore, tmp_path: Path
) -> None:
    """Two runs of ``serve --sandbox`` on one kept log, each ending a call from the phone
    panel: each run's call is recorded (the stand-in's ids no longer repeat)."""
    conversation_ids = []
    for run, phone in enumerate(("+15557770101", "+15557770102")):
        async with running_console(store, tmp_path) as console, console.client() as client:
            token = await console.signed_in(client)
            answer = await client.post(
                "/console/sandbox/call",
                data={"csrf": token, "name": "Ana", "phone": phone, "summary": f"run {run}"},
            )
            assert answer.status_code == 303

            def called(event: RecordedEvent, phone: str = phone) -> bool:
                return event.type == "CallCompleted" and event.stream == phone_stream(phone)

            call = await console.wait_for(called)
            conversation_ids.append(call.data["conversation_id"])
    assert conversation_ids[0] != conversation_ids[1]


async def test_the_calls_page_shows_a_batch_its_recipients_and_why_there_was_no_follow_up(
    console: Console,
) -> None:
    """What the call monitor records (events.batches), as the calls page shows it."""
    at = datetime.now(UTC)
    await console.store.append(
        batch_stream("btcal_march"),
        [
            to_new_event(e)
            for e in (
                BatchSeen("btcal_march", "agent_1", "March <reminders>", 2, "completed", at, at),
                RecipientSettled(
                    "btcal_march", "rcp_1", "conv_m1", "+15557770201", "failed", "recorded", at
                ),
                RecipientSettled(
                    "btcal_march", "rcp_2", None, None, "voicemail", "none", at, detail="no phone"
                ),
                BatchFinished("btcal_march", "completed", 0, 0, 1, 1, 0, at),
            )
        ],
    )
    await console.store.append(
        phone_stream("+15557770201"),
        [
            to_new_event(
                CallFailed("conv_m1", "agent_1", "+15557770201", "busy", batch_id="btcal_march")
            )
        ],
    )
    await console.projected()
    async with console.client() as client:
        await console.signed_in(client)
        page = await client.get("/console/calls?batch=btcal_march")
        assert page.status_code == 200, page.text
        text = page.text
        assert "March &lt;reminders&gt;" in text
        assert "no phone" in text
        assert "No: the call did not connect" in text
        assert "did not connect: busy" in text
        everything = await client.get("/console/calls")
        assert "btcal_march" in everything.text


async def test_the_session_cookie_is_secure_when_the_public_url_is_https(
    store: EventStore, tmp_path: Path
) -> None:
    env = {"PUBLIC_BASE_URL": "https://console.example.com"}
    async with running_console(store, tmp_path, env=env) as console, console.client() as client:
        form = await client.get("/console/sign-in")
        assert "Secure" in form.headers["set-cookie"]
        # A browser sends a Secure cookie back over https only; this client talks http.
        sign_in_cookie = form.headers["set-cookie"].split(";", 1)[0]
        answer = await client.post(
            "/console/sign-in",
            data={"name": OPERATOR, "password": PASSWORD, "csrf": csrf_of(form.text)},
            headers={"Cookie": sign_in_cookie},
        )
        assert answer.status_code == 303
        (header,) = [
            h for h in answer.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}=")
        ]
        cookie = SimpleCookie()
        cookie.load(header)
        assert cookie[SESSION_COOKIE]["secure"] is True
        assert cookie[SESSION_COOKIE]["httponly"] is True
        assert cookie[SESSION_COOKIE]["samesite"] == "Lax"


async def test_signing_out_ends_an_open_live_stream(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setattr(views, "SESSION_RECHECK", 0.0)
    async with console.client() as client:
        token = await console.signed_in(client)
        await client.post(
            "/console/sandbox/call",
            data={"csrf": token, "name": "Ana", "phone": PHONE, "summary": "A refund."},
        )
        url = f"/console/conversations/%2B{PHONE[1:]}/live"
        async with event_stream(console.url, url, client.cookies) as stream:
            await stream.until("event: timeline")
            await client.post("/console/sign-out", data={"csrf": token})
            await stream.until("event: signed-out", within=5)


HOSTILE_VALUES = (
    "",
    "\x00",
    "%",
    "_",
    "\\",
    "'; DROP TABLE conversations; --",
    "<script>alert(1)</script>",
    "\u202e\u0663\uff11",
    "9" * 19,
    "-1",
    "1e3",
    "x" * 199,
    "x" * 201,
    "2026-01-01T00:00:00~+15551230001",
    "2026-01-01T00:00:00+00:00~+15551230001",
    "phone-+15551230001",
    "phone- 15551230001",
)
PHONE_PATHS = (
    "%2B15551230001",
    "15551230001",
    "%2B",
    "%00",
    "%FF%FE",
    "..%2F..%2Fetc%2Fpasswd",
    "%2B1555" + "1" * 5_000,
    "%E2%80%AE%2B15551230001",
)


async def test_hostile_input_to_every_page_is_a_4xx_with_a_reason_never_a_5xx(
    console: Console,
) -> None:
    """What the fuzz suite does to the API, done to the console's pages and posts."""
    async with console.client() as client:
        token = await console.signed_in(client)
        for path in PHONE_PATHS:
            for suffix in ("", "/live?after=x"):
                answer = await client.get(f"/console/conversations/{path}{suffix}")
                assert answer.status_code < 500, (path, answer.text[:200])
        pages = {
            "/console/conversations": ("state", "q", "after"),
            "/console/events": ("stream", "type", "category", "after"),
            "/console/calls": ("batch", "before"),
            "/console/sign-in": ("next",),
            "/console/sandbox": ("phone",),
        }
        for page, names in pages.items():
            for name in names:
                # Bytes that are not UTF-8 (a lone surrogate's, a stray continuation).
                for raw in ("%ED%A0%80", "%FF", "%C3"):
                    answer = await client.get(f"{page}?{name}={raw}")
                    assert answer.status_code < 500, (page, name, raw, answer.text[:200])
                for value in HOSTILE_VALUES:
                    answer = await client.get(page, params={name: value})
                    assert answer.status_code < 500, (page, name, value, answer.text[:200])
                    if answer.status_code >= 400:
                        assert "error" in answer.text or "alert" in answer.text
        for action, fields in (
            ("/console/sandbox/message", ("phone", "text", "name")),
            ("/console/sandbox/call", ("phone", "summary", "name")),
        ):
            for field in fields:
                for value in HOSTILE_VALUES:
                    data = {"csrf": token, "phone": PHONE, "text": "hi", "summary": "s", "name": ""}
                    if action.endswith("/call"):
                        data.pop("text")
                    else:
                        data.pop("summary")
                    data[field] = value
                    answer = await client.post(action, data=data)
                    assert answer.status_code < 500, (action, field, value, answer.text[:200])
        assert (await client.get("/console")).status_code == 200  # still signed in


@pytest.mark.parametrize(
    ("next_", "location"),
    [
        ("/console/calls?batch=b1", "/console/calls?batch=b1"),
        ("https://evil.example/console", "/console"),
        ("//evil.example/console", "/console"),
        ("/console/..//evil.example", "/console"),
        ("/elsewhere", "/console"),
        ("/console\\@evil.example", "/console"),
        ("/console/sign-in", "/console"),
    ],
)
async def test_signing_in_goes_back_to_a_console_page_and_nowhere_else(
    console: Console, next_: str, location: str
) -> None:
    async with console.client() as client:
        form = await client.get("/console/sign-in")
        answer = await client.post(
            "/console/sign-in",
            data={
                "name": OPERATOR,
                "password": PASSWORD,
                "csrf": csrf_of(form.text),
                "next": next_,
            },
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == location


async def test_the_overview_lists_events_a_read_model_parked(console: Console) -> None:
    # A status whose time does not parse: the history cannot fold it and parks it.
    recorded = await console.store.append(
        delivery_stream(PHONE), [unreadable_time("SMparked<b>x</b>")]
    )
    runner = console.system.projections
    assert runner is not None
    with trio.fail_after(30):  # the real clock: parked after its tries, ~1.5 s
        await runner.wait_until(recorded.position, ["history"])
    async with console.client() as client:
        await console.signed_in(client)
        page = (await client.get("/console")).text
    assert 'id="parked"' in page
    assert "aftercall projections retry" in page
    assert f'href="/console/events?after={recorded.position - 1}"' in page
    assert "Invalid isoformat string: &#39;yesterday&#39;" in page
