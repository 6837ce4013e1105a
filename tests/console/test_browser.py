"""The console in a real browser (Chromium through Playwright), against the real app in
sandbox mode: a follow-up played from the phone panel shows on every page, new messages
arrive on an open page without a reload, and a customer's markup stays text.

Every page is saved as a screenshot, desktop and phone-sized, under
``tests/console/screenshots/`` (git-ignored), for a person to look at.
"""

from __future__ import annotations

import re
from typing import Any

import trio
from playwright.sync_api import Page, expect

from events.conversation import delivery_stream, phone_stream
from tests.console.browser import PHONE as PHONE_SIZE
from tests.console.browser import BrowserThread, Tab
from tests.console.harness import OPERATOR, PASSWORD, Console

ANA = "+15558880001"
XSS = "<script>alert(1)</script>"
XSS_NAME = '<img src=x onerror="alert(2)">'
SECONDS = 10_000  # Playwright's waits, in ms


async def _sign_in(tab: Tab, console: Console, password: str = PASSWORD) -> None:
    def sign_in(page: Page) -> None:
        page.goto(f"{console.url}/console/sign-in")
        page.fill("input[name=name]", OPERATOR)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")

    await tab.do(sign_in)


async def _open(tab: Tab, console: Console, path: str) -> None:
    await tab.do(lambda page: page.goto(f"{console.url}{path}"))


async def test_every_page_sends_a_stranger_to_sign_in_and_every_action_refuses(
    console: Console, browser: BrowserThread
) -> None:
    tab = await Tab.open(browser)
    try:
        for path in (
            "/console",
            "/console/conversations?state=active",
            f"/console/conversations/%2B{ANA[1:]}",
            "/console/events",
            "/console/calls",
            "/console/sandbox",
        ):
            await _open(tab, console, path)
            url = await tab.do(lambda page: page.url)
            assert "/console/sign-in?next=" in url, path
            await tab.do(lambda page: expect(page.locator("h1")).to_have_text("Sign in"))
        await tab.screenshot("sign-in")
        for path in (
            "/console/sign-out",
            "/console/sandbox/call",
            "/console/sandbox/message",
        ):

            def post(page: Page, path: str = path) -> int:
                form: dict[str, str | float | bool] = {"csrf": "x", "phone": ANA, "text": "hi"}
                return page.request.post(f"{console.url}{path}", form=form).status

            assert await tab.do(post) == 401, path
        live = await tab.do(
            lambda page: (
                page.request.get(f"{console.url}/console/conversations/%2B1555/live").status
            )
        )
        assert live == 401
    finally:
        await tab.close()
    assert not await console.store.read_stream(phone_stream(ANA))


async def test_a_wrong_password_is_refused_and_the_right_one_signs_in(
    console: Console, browser: BrowserThread
) -> None:
    tab = await Tab.open(browser)
    try:
        await _sign_in(tab, console, "not the password")
        await tab.do(
            lambda page: expect(page.locator("[role=alert]")).to_have_text(
                "Wrong name or password."
            )
        )
        await tab.screenshot("sign-in-wrong-password")
        await tab.do(lambda page: expect(page.locator("input[name=password]")).to_have_value(""))
        await _sign_in(tab, console)
        await tab.do(lambda page: expect(page.locator("h1")).to_have_text("Overview"))
        await tab.do(lambda page: expect(page.locator(".who")).to_have_text(OPERATOR))
    finally:
        await tab.close()


async def test_a_form_with_a_forged_csrf_token_is_refused(
    console: Console, browser: BrowserThread
) -> None:
    tab = await Tab.open(browser)
    try:
        await _sign_in(tab, console)

        def forge_and_sign_out(page: Page) -> None:
            page.locator("form.signout input[name=csrf]").evaluate("el => el.value = 'forged'")
            page.click("form.signout button")

        await tab.do(forge_and_sign_out)
        await tab.do(lambda page: expect(page.locator("h1")).to_have_text("Refused"))
        await tab.do(lambda page: expect(page.locator("[role=alert]")).to_contain_text("CSRF"))
        await tab.screenshot("csrf-refused")
        await _open(tab, console, "/console")  # still signed in: the forged post did nothing
        await tab.do(lambda page: expect(page.locator("h1")).to_have_text("Overview"))
    finally:
        await tab.close()


async def test_the_phone_panel_plays_a_whole_follow_up_that_every_page_shows(
    console: Console, browser: BrowserThread
) -> None:
    """The newcomer's path: sign in, end a call from the phone panel, watch the first
    message go out, write as the customer, watch the agent answer; then every page."""
    tab = await Tab.open(browser)
    try:
        await _sign_in(tab, console)
        await _open(tab, console, "/console/sandbox")
        await tab.screenshot("sandbox-phone")

        def end_call(page: Page) -> None:
            page.fill("input[name=name] >> nth=0", "Ana")
            page.fill("form[action$='/call'] input[name=phone]", ANA)
            page.fill("textarea[name=summary]", "Ana was charged twice; a refund of 20 euros.")
            page.click("form[action$='/call'] button")
            expect(page.locator("h1")).to_contain_text("Ana", timeout=SECONDS)

        await tab.do(end_call)
        # The first message (the sandbox's template) goes out and Twilio reports it read,
        # on this page, while it stays open.
        await tab.do(lambda page: page.evaluate("window.stayedOpen = true"))
        await tab.do(
            lambda page: expect(page.locator(".message.outbound .delivery").first).to_contain_text(
                "read", timeout=SECONDS
            )
        )
        await tab.do(
            lambda page: expect(page.locator(".call .summary")).to_have_text(
                "Ana was charged twice; a refund of 20 euros."
            )
        )

        def write(page: Page) -> None:
            page.fill("form[data-async] textarea[name=text]", "When does the refund arrive?")
            page.click("form[data-async] button")

        await tab.do(write)
        await tab.do(
            lambda page: expect(page.locator(".message.inbound .body").last).to_have_text(
                "When does the refund arrive?", timeout=SECONDS
            )
        )
        await tab.do(
            lambda page: expect(page.locator(".note-agent_answered")).to_have_count(
                1, timeout=SECONDS
            )
        )
        await tab.do(
            lambda page: expect(page.locator(".message.outbound").last).to_contain_text(
                "agent", timeout=SECONDS
            )
        )
        assert await tab.do(lambda page: page.evaluate("window.stayedOpen")) is True
        await tab.do(
            lambda page: expect(page.locator(".message.outbound .delivery").last).to_contain_text(
                "aftercall +", timeout=SECONDS
            )
        )
        await tab.screenshot("conversation")
        await console.projected()

        await _open(tab, console, "/console")
        await tab.do(lambda page: expect(page.locator(".funnel")).to_contain_text("1 calls ended"))
        await tab.do(
            lambda page: expect(page.locator(".funnel")).to_contain_text("1 customer replied")
        )
        await tab.do(lambda page: expect(page.locator("svg.chart").first).to_be_visible())
        await tab.screenshot("overview")

        await _open(tab, console, "/console/conversations")
        row = "table.conversations tbody tr"
        await tab.do(lambda page: expect(page.locator(row)).to_have_count(1))
        await tab.do(lambda page: expect(page.locator(row)).to_contain_text("Ana"))
        await tab.do(lambda page: expect(page.locator(row)).to_contain_text(ANA))
        await tab.do(lambda page: expect(page.locator(row)).to_contain_text("waiting"))
        await tab.screenshot("conversations")

        await _open(tab, console, "/console/conversations?state=failed")
        await tab.do(lambda page: expect(page.locator(row)).to_have_count(0))
        await _open(tab, console, "/console/conversations?q=ana")
        await tab.do(lambda page: expect(page.locator(row)).to_have_count(1))

        await _open(tab, console, f"/console/events?stream={phone_stream(ANA)}")
        await tab.do(
            lambda page: expect(page.locator(".events li").first).to_contain_text("CallCompleted")
        )
        await tab.do(lambda page: expect(page.locator(".events")).to_contain_text("AgentAnswered"))
        await tab.do(lambda page: page.locator(".events details").first.click())
        await tab.do(
            lambda page: expect(page.locator(".events pre").first).to_contain_text(
                "a refund of 20 euros"
            )
        )
        await tab.screenshot("events")
        await _open(
            tab,
            console,
            f"/console/events?stream={delivery_stream(ANA)}&type=DeliveryStatusChanged",
        )
        await tab.do(
            lambda page: expect(page.locator(".events")).to_contain_text("DeliveryStatusChanged")
        )

        await _open(tab, console, "/console/calls")
        calls = "section.card:has(h2:text('Calls and their follow-up')) tbody tr"
        await tab.do(lambda page: expect(page.locator(calls)).to_have_count(1))
        await tab.do(lambda page: expect(page.locator(calls)).to_contain_text("Yes: first message"))
        await tab.screenshot("calls")

        phone = await Tab.open(browser, PHONE_SIZE)
        try:
            await _sign_in(phone, console)
            for path, name in (
                ("/console", "overview-phone"),
                ("/console/conversations", "conversations-phone"),
                (f"/console/conversations/%2B{ANA[1:]}", "conversation-phone"),
                ("/console/events", "events-phone"),
                ("/console/calls", "calls-phone"),
                ("/console/sandbox", "sandbox-phone-phone"),
            ):
                await _open(phone, console, path)
                width = await phone.do(
                    lambda page: page.evaluate("document.documentElement.scrollWidth")
                )
                assert width <= PHONE_SIZE["width"], (path, width)  # no sideways scrolling
                await phone.screenshot(name)
        finally:
            await phone.close()
        assert tab.dialogs == []
    finally:
        await tab.close()


async def test_a_message_arrives_on_an_open_page_without_a_reload(
    console: Console, browser: BrowserThread
) -> None:
    phone_panel = console.system.sandbox_phone
    assert phone_panel is not None
    await phone_panel.end_call(ANA, "Ana", "A refund.")
    await console.wait_for(lambda e: e.type == "ReplySent" and e.stream == phone_stream(ANA))
    await console.projected()
    tab = await Tab.open(browser)
    try:
        await _sign_in(tab, console)
        await _open(tab, console, f"/console/conversations/%2B{ANA[1:]}")
        await tab.do(
            lambda page: expect(page.locator("#live")).to_have_attribute(
                "data-connected", "yes", timeout=SECONDS
            )
        )
        await tab.do(lambda page: page.evaluate("window.stayedOpen = true"))
        latencies = []
        for number in range(3):
            text = f"Message number {number} from the customer"
            started = trio.current_time()
            await phone_panel.customer_writes(ANA, text, "Ana")

            def arrived(page: Page, text: str = text) -> None:
                expect(page.locator("#live")).to_contain_text(text, timeout=5000)

            await tab.do(arrived)
            latencies.append(trio.current_time() - started)
        assert await tab.do(lambda page: page.evaluate("window.stayedOpen")) is True
        print(f"\nlive update in the browser: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
        assert max(latencies) < 1.0, latencies
    finally:
        await tab.close()


async def test_markup_from_customers_and_calls_stays_text(
    console: Console, browser: BrowserThread
) -> None:
    phone_panel = console.system.sandbox_phone
    assert phone_panel is not None
    await phone_panel.end_call(ANA, XSS_NAME, f"Summary with {XSS}")
    await phone_panel.customer_writes(ANA, XSS, XSS_NAME)
    await console.wait_for(lambda e: e.type == "MessageReceived" and e.data.get("body") == XSS)
    await console.projected()
    tab = await Tab.open(browser)
    try:
        await _sign_in(tab, console)
        for path in (
            f"/console/conversations/%2B{ANA[1:]}",
            "/console/conversations",
            f"/console/events?stream={phone_stream(ANA)}",
            "/console/calls",
        ):
            await _open(tab, console, path)
            body: Any = await tab.do(lambda page: page.locator("main").text_content())
            assert XSS in body or XSS_NAME in body, path
            scripts = await tab.do(lambda page: page.locator("main script, main img").count())
            assert scripts == 0, path
        await _open(tab, console, f"/console/conversations/%2B{ANA[1:]}")
        await tab.do(lambda page: expect(page.locator(".message.inbound .body")).to_have_text(XSS))
        await tab.do(lambda page: expect(page.locator("h1")).to_contain_text(XSS_NAME))
        await tab.screenshot("markup-stays-text")
        await trio.sleep(0.5)  # time for anything that would run to run
        assert tab.dialogs == []
    finally:
        await tab.close()


async def test_long_texts_do_not_make_a_phone_screen_scroll_sideways(
    console: Console, browser: BrowserThread
) -> None:
    phone_panel = console.system.sandbox_phone
    assert phone_panel is not None
    await phone_panel.end_call(ANA, "Ana " + "Long" * 30, "A very long summary " * 40)
    await phone_panel.customer_writes(ANA, "x" * 500, "Ana")
    await console.wait_for(lambda e: e.type == "ReplySent" and e.stream == phone_stream(ANA))
    await console.projected()
    tab = await Tab.open(browser, PHONE_SIZE)
    try:
        await _sign_in(tab, console)
        for path in (f"/console/conversations/%2B{ANA[1:]}", "/console/conversations"):
            await _open(tab, console, path)
            width = await tab.do(lambda page: page.evaluate("document.documentElement.scrollWidth"))
            assert width <= PHONE_SIZE["width"], (path, width)
        assert re.search(r"/console/conversations$", await tab.do(lambda page: page.url))
    finally:
        await tab.close()


async def test_an_operator_takes_over_writes_and_hands_back_from_the_page(
    console: Console, browser: BrowserThread
) -> None:
    """Hand-off from the console (issue: people in control): outside the window the page
    offers the approved template; once the person writes, take over, write as yourself
    (the bot stays silent), hand back (the agent answers again, knowing what was said)."""
    phone_panel = console.system.sandbox_phone
    assert phone_panel is not None
    await phone_panel.end_call(ANA, "Ana", "Ana was charged twice.")
    await console.wait_for(lambda e: e.type == "ReplySent" and e.stream == phone_stream(ANA))
    await console.projected()
    tab = await Tab.open(browser)
    try:
        await _sign_in(tab, console)
        await _open(tab, console, f"/console/conversations/%2B{ANA[1:]}")
        # Ana has not written: free text would not be delivered, the template would.
        write_card = "section[aria-label='write to the person']"
        await tab.do(
            lambda page: expect(page.locator(write_card)).to_contain_text("window is closed")
        )
        await tab.do(lambda page: expect(page.locator(f"{write_card} textarea")).to_have_count(0))
        await tab.do(lambda page: page.click(f"{write_card} button:text('approved template')"))
        await tab.do(
            lambda page: expect(page.locator(".control")).to_contain_text(
                f"{OPERATOR} has this conversation", timeout=SECONDS
            )
        )
        await console.wait_for(
            lambda e: e.type == "ReplySent" and e.stream == phone_stream(ANA), count=2
        )
        await tab.screenshot("conversation-template-sent")

        # Ana answers: the window opens; the bot is silent while the operator has it.
        await tab.do(lambda page: page.click(".control button:text('Hand back to the bot')"))
        await tab.do(
            lambda page: expect(page.locator(".control")).to_contain_text(
                "The bot answers", timeout=SECONDS
            )
        )
        await phone_panel.customer_writes(ANA, "Yes, I was charged twice.", "Ana")
        await console.wait_for(
            lambda e: e.type == "ReplySent" and e.stream == phone_stream(ANA), count=3
        )
        await _open(tab, console, f"/console/conversations/%2B{ANA[1:]}")
        await tab.do(lambda page: page.click(".control button:text('Take over')"))
        await tab.do(
            lambda page: expect(page.locator(".control")).to_contain_text(
                f"{OPERATOR} has this conversation", timeout=SECONDS
            )
        )
        await phone_panel.customer_writes(ANA, "Hello? Is a person there?", "Ana")
        await console.wait_for(
            lambda e: e.type == "MessageReceived" and e.stream == phone_stream(ANA), count=2
        )

        def write(page: Page) -> None:
            page.fill(f"{write_card} textarea[name=text]", "Hi Ana, Maria here: refunded today.")
            page.click(f"{write_card} button")

        await tab.do(write)
        await tab.do(
            lambda page: expect(page.locator(".message.outbound .body").last).to_have_text(
                "Hi Ana, Maria here: refunded today.", timeout=SECONDS
            )
        )
        await console.wait_for(
            lambda e: e.type == "ReplySent" and e.stream == phone_stream(ANA), count=4
        )
        await tab.do(
            lambda page: expect(page.locator(".note-human_took_over").first).to_contain_text(
                OPERATOR
            )
        )
        await tab.screenshot("conversation-taken-over")

        await tab.do(lambda page: page.click(".control button:text('Hand back to the bot')"))
        await tab.do(
            lambda page: expect(page.locator(".control")).to_contain_text(
                "The bot answers", timeout=SECONDS
            )
        )
        await phone_panel.customer_writes(ANA, "Thanks! When will I see it?", "Ana")
        await console.wait_for(
            lambda e: e.type == "ReplySent" and e.stream == phone_stream(ANA), count=5
        )
        events = await console.store.read_stream(phone_stream(ANA))
        assert tab.dialogs == []
    finally:
        await tab.close()
    kinds = [e.data["kind"] for e in events if e.type == "ReplyRequested"]
    # first message, the template, the agent, the operator, the agent again: the person's
    # "Hello? Is a person there?" got no bot answer while the operator had it.
    assert kinds == ["first_message", "operator", "agent", "operator", "agent"]
    requests = [e.data for e in events if e.type == "OperatorMessageRequested"]
    assert [r["operator"] for r in requests] == [OPERATOR, OPERATOR]
    assert requests[0]["template"] is not None
    assert requests[1]["template"] is None
