"""What the stand-in's HTTP face reads and calls on the stand-in, as a Protocol.

``_standin`` builds its app with ``_server.build_app(self)``; typing the routes (``_server``
and ``_control``) against this Protocol rather than ``ElevenLabsStandIn`` keeps every import
one way (``_standin`` → ``_server`` → ``_control`` → here), so nothing has to hide a cycle
behind a deferred import. Read-only members are properties, so the routes cannot replace
what they only read; the settable ones are those the control API configures.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, Literal, Protocol

from quart.wrappers import Websocket

from sandbox.elevenlabs._agents import AgentConfig
from sandbox.elevenlabs._calls import CallScript, CallTiming
from sandbox.elevenlabs._faults import Faults
from sandbox.elevenlabs._protocol import ProtocolViolation
from sandbox.elevenlabs._records import BatchRecord, ConversationRecord
from sandbox.elevenlabs._session import LiveSession
from sandbox.elevenlabs._webhooks import WebhookDelivery


class ServedStandIn(Protocol):
    """The stand-in as its REST routes, its WebSocket and ``/_sandbox`` see it."""

    call_timing: CallTiming
    webhook_url: str | None
    webhook_secret: str | None
    webhook_events: frozenset[str]
    webhook_retry_delays: tuple[float, ...]

    @property
    def api_key(self) -> str | None: ...
    @property
    def faults(self) -> Faults: ...
    @property
    def agents(self) -> MutableMapping[str, AgentConfig]: ...
    @property
    def sessions(self) -> Mapping[str, LiveSession]: ...
    @property
    def conversations(self) -> MutableMapping[str, ConversationRecord]: ...
    @property
    def batches(self) -> Mapping[str, BatchRecord]: ...
    @property
    def call_scripts(self) -> MutableMapping[str, CallScript]: ...
    @property
    def webhook_deliveries(self) -> Sequence[WebhookDelivery]: ...
    @property
    def now_unix(self) -> int: ...
    @property
    def elapsed(self) -> float: ...

    # --- agents, faults, the clock
    def add_agent(self, agent: AgentConfig) -> AgentConfig: ...
    def agent(self, agent_id: str | None) -> AgentConfig: ...
    def set_faults(
        self, faults: Faults, *, agent_id: str | None = None, conversation_id: str | None = None
    ) -> None: ...
    def queue_connection_faults(self, *faults: Faults) -> None: ...
    async def advance(self, seconds: float) -> None: ...

    # --- signed URLs and sessions
    def consume_refusal(self, agent_id: str | None, *, handshake: bool) -> int | None: ...
    def signed_url(self, agent_id: str, ws_base: str, *, include_conversation_id: bool) -> str: ...
    def admit(
        self, query: Mapping[str, str]
    ) -> tuple[AgentConfig, str, str] | ProtocolViolation: ...
    async def serve_socket(
        self,
        websocket: Websocket,
        agent: AgentConfig,
        conversation_id: str,
        auth_method: str,
        query: Mapping[str, str],
    ) -> None: ...
    def session(self, conversation_id: str) -> LiveSession: ...
    async def correct_last_response(self, conversation_id: str, corrected: str) -> None: ...

    # --- phone calls and batches
    def place_call(
        self,
        agent_id: str,
        to_number: str,
        agent_phone_number_id: str,
        initiation: Mapping[str, Any] | None = None,
    ) -> ConversationRecord: ...
    def submit_batch(self, body: Mapping[str, Any]) -> BatchRecord: ...
    def batch(self, batch_id: str) -> BatchRecord: ...
    def cancel_batch(self, batch_id: str) -> BatchRecord: ...
    def retry_batch(self, batch_id: str) -> BatchRecord: ...
    def delete_batch(self, batch_id: str) -> None: ...
    async def complete_call(
        self,
        external_number: str,
        *,
        agent_id: str,
        user_turns: tuple[str, ...] | None,
        summary: str | None,
        dynamic_variables: Mapping[str, Any] | None,
    ) -> ConversationRecord: ...
    async def fail_call(
        self, external_number: str, *, agent_id: str, outcome: Literal["failed", "no-answer"]
    ) -> ConversationRecord: ...
