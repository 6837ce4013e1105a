"""A real browser for the console's tests: Playwright driving Debian's Chromium.

The app under test runs in the test's Trio loop (a real server on a real socket). Playwright
for Python offers a sync API (greenlets, with its own event loop) and an asyncio API; the
sync one runs happily in a thread of its own, so that is the shape here: one thread owns
Playwright and the browser for the whole session, every browser action is a plain function
sent to that thread, and the test awaits its result with ``trio.to_thread.run_sync``, which
keeps the Trio loop (and so the server) running meanwhile. Playwright objects never leave
that thread except as opaque handles passed back into it.

Chromium is the distribution's (``/usr/bin/chromium``, ``apt-get install -y chromium``;
``.ci/run`` installs it), launched with ``executable_path``: Playwright's own browser
download is not reachable from these machines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

T = TypeVar("T")

_Job = tuple[Callable[[Browser], Any], "concurrent.futures.Future[Any]"]
CHROMIUM = os.environ.get("AFTERCALL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: Screenshots of every page, for a person to look at (git-ignored).
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def _start_playwright() -> Playwright:
    """Playwright's sync API, on a plain asyncio loop of its own.

    It makes its loop with ``asyncio.new_event_loop()``, which trio-asyncio (imported by
    the event store's bridge) replaces for every thread with one that makes trio-asyncio
    loops; Playwright cannot run on one of those. The original is put back for the call:
    it happens while the test session sets up its fixtures, with no Trio loop running.
    """
    replaced = asyncio.new_event_loop
    asyncio.new_event_loop = lambda: asyncio.DefaultEventLoopPolicy().new_event_loop()
    try:
        return sync_playwright().start()
    finally:
        asyncio.new_event_loop = replaced


class BrowserThread:
    """Playwright's sync API in a thread of its own (see the module docstring)."""

    def __init__(self, executable: str = CHROMIUM) -> None:
        self.executable = executable
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="playwright", daemon=True)
        self._thread.start()
        self._started.result(timeout=60)

    def _main(self) -> None:
        try:
            playwright = _start_playwright()
            browser = playwright.chromium.launch(executable_path=self.executable)
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                fn, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(browser))
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            browser.close()
            playwright.stop()

    async def call(self, fn: Callable[[Browser], T]) -> T:
        """``fn(browser)`` in the browser's thread; the Trio loop runs on meanwhile."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)


@attrs.define
class Tab:
    """One page in its own browser context (cookies of its own), driven from Trio."""

    browser: BrowserThread
    context: BrowserContext
    page: Page
    #: JavaScript dialogs the page opened (an ``alert`` would mean a script ran).
    dialogs: list[str] = attrs.Factory(list)

    @classmethod
    async def open(cls, browser: BrowserThread, viewport: dict[str, int] = DESKTOP) -> Tab:
        def make(b: Browser) -> tuple[BrowserContext, Page]:
            context = b.new_context(viewport=viewport)  # type: ignore[arg-type]
            return context, context.new_page()

        context, page = await browser.call(make)
        tab = cls(browser, context, page)

        def watch(page: Page) -> None:
            def dismiss(dialog: Any) -> None:
                tab.dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", dismiss)

        await tab.do(watch)
        return tab

    async def do(self, fn: Callable[[Page], T]) -> T:
        """``fn(page)`` in the browser's thread."""
        return await self.browser.call(lambda _b: fn(self.page))

    async def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.do(lambda p: p.screenshot(path=str(path), full_page=True))
        return path

    async def close(self) -> None:
        await self.browser.call(lambda _b: self.context.close())
