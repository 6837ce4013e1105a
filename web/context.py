"""What the web layer needs of a running aftercall, and how a handler reaches it.

The system is built by the composition root (``aftercall.system``) and handed to the app
factory; the handlers only see this narrow, typed view of it, so ``web`` never imports the
layer above it. ``aftercall.system.System`` satisfies these protocols structurally.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import trio
from quart import current_app

from actors.statistics import RegistryStatistics
from events.store import AppendResult, EventStore, NewEvent, StoreUnavailable
from projections.runner import ProjectionRunner
from web.console.accounts import OperatorAccounts

#: Where the app keeps the running system (``app.config``), once ``before_serving`` ran.
SYSTEM_KEY = "AFTERCALL_SYSTEM"


class WebSettings(Protocol):
    """The settings handlers read: secrets to check requests with, and public URLs."""

    @property
    def twilio_auth_token(self) -> str: ...
    @property
    def whatsapp_webhook_url(self) -> str: ...
    @property
    def status_callback_url(self) -> str: ...
    @property
    def elevenlabs_webhook_secret(self) -> str | None: ...
    @property
    def follow_up_failed_calls(self) -> bool: ...
    @property
    def admin_token(self) -> str | None: ...
    @property
    def public_base_url(self) -> str: ...
    @property
    def sandbox(self) -> bool: ...
    @property
    def first_message_template_sid(self) -> str | None: ...
    @property
    def unnamed(self) -> str: ...


class Phones(Protocol):
    """The phone actors, as far as a handler is concerned: how busy they are."""

    def statistics(self) -> RegistryStatistics: ...


class Conflicts(Protocol):
    """Decisions another process recorded first (``followup.phone.ConflictCount``)."""

    @property
    def decision_conflicts(self) -> int: ...


class SandboxPhone(Protocol):
    """The stand-ins' phone, for the console's sandbox panel (``aftercall`` builds it; the
    web layer never imports ``sandbox``)."""

    async def end_call(self, phone: str, name: str, summary: str) -> str:
        """A simulated phone call with this person ends: ElevenLabs' stand-in sends its
        signed post-call webhook, as ElevenLabs would. Returns the call's conversation id."""
        ...

    async def customer_writes(self, phone: str, text: str, name: str) -> str:
        """The person writes on WhatsApp: Twilio's stand-in posts the signed inbound
        webhook, as Twilio would. Returns the MessageSid."""
        ...


class WebSystem(Protocol):
    """A running aftercall, seen from an HTTP handler."""

    @property
    def settings(self) -> WebSettings: ...
    @property
    def store(self) -> EventStore: ...
    @property
    def phones(self) -> Phones: ...
    @property
    def projections(self) -> ProjectionRunner | None: ...
    @property
    def conflicts(self) -> Conflicts: ...
    @property
    def operators(self) -> OperatorAccounts: ...
    @property
    def sandbox_phone(self) -> SandboxPhone | None: ...

    def notify_phone(self, phone: str, version: int | None = None, event: Any = None) -> bool:
        """Wake the phone's actor: its stream grew (never waits; the log holds the work)."""
        ...


def current_system() -> WebSystem:
    """The running system of the app serving this request."""
    system: WebSystem | None = current_app.config.get(SYSTEM_KEY)
    if system is None:  # pragma: no cover - only between lifespan phases
        raise StoreUnavailable("aftercall is starting")
    return system


#: How long a webhook waits for the log to take its event. Twilio gives up on an answer
#: after 15 s and then delivers nothing again unless told to (connection overrides, README):
#: answering 503 before that is what lets a retry policy deliver it again.
APPEND_BUDGET = 12.0


async def append_in_time(
    store: EventStore, stream: str, events: Sequence[NewEvent], budget: float = APPEND_BUDGET
) -> AppendResult:
    """Append, or raise `StoreUnavailable` (a 503) once ``budget`` seconds have passed.

    The store retries a database outage on its own for a while, and appends queued behind
    a retrying batch wait longer still: during a long outage webhooks were seen unanswered
    past Twilio's 15 s. An append given up here may still be written once the database is
    back; the events' derived ids make a redelivery of it a no-op.
    """
    with trio.move_on_after(budget):
        return await store.append(stream, events)
    raise StoreUnavailable(
        f"the event log did not take the event within {budget:g} s (is the database up?)"
    )
