"""What the web layer needs of a running aftercall, and how a handler reaches it.

The system is built by the composition root (``aftercall.system``) and handed to the app
factory; the handlers only see this narrow, typed view of it, so ``web`` never imports the
layer above it. ``aftercall.system.System`` satisfies these protocols structurally.
"""

from __future__ import annotations

from typing import Any, Protocol

from quart import current_app

from actors.statistics import RegistryStatistics
from events.store import EventStore, StoreUnavailable
from projections.runner import ProjectionRunner

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


class Phones(Protocol):
    """The phone actors, as far as a handler is concerned: how busy they are."""

    def statistics(self) -> RegistryStatistics: ...


class Conflicts(Protocol):
    """Decisions another process recorded first (``followup.phone.ConflictCount``)."""

    @property
    def decision_conflicts(self) -> int: ...


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

    def notify_phone(self, phone: str, version: int | None = None, event: Any = None) -> bool:
        """Wake the phone's actor: its stream grew (never waits; the log holds the work)."""
        ...


def current_system() -> WebSystem:
    """The running system of the app serving this request."""
    system: WebSystem | None = current_app.config.get(SYSTEM_KEY)
    if system is None:  # pragma: no cover - only between lifespan phases
        raise StoreUnavailable("aftercall is starting")
    return system
