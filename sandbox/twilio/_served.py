"""What the stand-in's HTTP face reads and calls on the stand-in, as a Protocol.

``_standin`` builds its app with ``_server.build_app(self)``; typing the routes against this
Protocol rather than ``TwilioStandIn`` keeps every import one way (``_standin`` → ``_server``
→ here), so nothing has to hide a cycle behind a deferred import. Read-only members are
properties, so the routes cannot replace what they only read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from sandbox.twilio._clock import SandboxClock
from sandbox.twilio._faults import Fault, FaultPlan
from sandbox.twilio._protocol import CreateRequest
from sandbox.twilio._values import (
    ApiError,
    Delivery,
    Media,
    MessageRecord,
    StoredMedia,
    Template,
)


class ServedStandIn(Protocol):
    """The stand-in as its REST routes and ``/_sandbox`` control API see it."""

    webhook_url: str | None
    status_callbacks: bool

    @property
    def account_sid(self) -> str: ...
    @property
    def auth_token(self) -> str: ...
    @property
    def whatsapp_from(self) -> str: ...
    @property
    def base_url(self) -> str | None: ...
    @property
    def clock(self) -> SandboxClock: ...
    @property
    def faults(self) -> FaultPlan: ...
    @property
    def templates(self) -> Mapping[str, Template]: ...
    @property
    def messages(self) -> Mapping[str, MessageRecord]: ...
    @property
    def media(self) -> Mapping[str, StoredMedia]: ...
    @property
    def deliveries(self) -> Sequence[Delivery]: ...

    def create_message(self, request: CreateRequest) -> MessageRecord: ...
    def refusal_now(self, to: str) -> ApiError | None: ...

    async def user_says(
        self,
        phone: str,
        body: str = "",
        *,
        media: Sequence[Media] | None = None,
        duplicate: bool = False,
        bad_signature: bool = False,
        profile_name: str = "Sandbox User",
    ) -> str: ...

    def received(self, phone: str) -> list[MessageRecord]: ...
    def inject(self, fault: Fault, *, times: int | None = 1, phone: str | None = None) -> None: ...
    def clear_faults(self) -> None: ...
    def advance(self, seconds: float) -> None: ...
    def register_template(self, body: str, *, sid: str | None = None) -> str: ...
