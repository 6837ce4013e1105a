"""``ElevenLabsStandIn``: the state of a fake ElevenLabs Agents Platform, and its clock.

Two clocks, on purpose:

* WebSocket sessions (pings, idle, max duration, reply delays) run on trio's clock, so
  tests drive them with ``autojump_clock``.
* Phone calls, batches and post-call processing run on the stand-in's own clock, which moves
  only when someone calls ``advance(seconds)`` (or ``POST /_sandbox/clock/advance``): a test
  says "a minute passes" and then checks statuses, with no wall-clock and no races. Its unix
  time starts at ``epoch_unix`` (the real time at construction unless given).

Webhook signatures are the exception: their ``t=`` is real time (``wall_clock``), because
the receiver checks it against its own clock.
"""

from __future__ import annotations

import heapq
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import httpx
import trio
from quart.wrappers import Websocket
from quart_trio import QuartTrio

import sandbox.elevenlabs._protocol as proto
from sandbox._standin_server import serve_standin
from sandbox.elevenlabs._agents import (
    DEFAULT_AGENT_ID,
    AgentConfig,
    ClientToolScript,
    default_agents,
)
from sandbox.elevenlabs._brain import SessionContext, Turn, ask_brain, context_brain
from sandbox.elevenlabs._calls import (
    DEFAULT_SCRIPT,
    CallScript,
    CallTiming,
    Outcome,
    StepKind,
    failure_reason,
    plan_call,
    twilio_call_status,
)
from sandbox.elevenlabs._errors import RequestError
from sandbox.elevenlabs._faults import NO_FAULTS, Faults
from sandbox.elevenlabs._ids import IdFactory
from sandbox.elevenlabs._records import (
    RECIPIENT_TERMINAL,
    Analysis,
    BatchRecord,
    ConversationRecord,
    PhoneCallInfo,
    RecipientRecord,
    TranscriptEntry,
    conversation_json,
    summarize_transcript,
)
from sandbox.elevenlabs._server import build_app
from sandbox.elevenlabs._session import LiveSession, SessionSettings, run_session
from sandbox.elevenlabs._webhooks import EVENT_SETTING, WebhookDelivery, WebhookJob, deliver

__all__ = ["DEFAULT_AGENT_ID", "AgentConfig", "ElevenLabsStandIn", "serve_elevenlabs"]

logger = logging.getLogger(__name__)

DEFAULT_AGENT_NUMBER = "+15550100000"
WEBHOOK_TIMEOUT_SECONDS = 10.0


@attrs.frozen
class _SignedToken:
    agent_id: str
    expires_at: float
    conversation_id: str | None


@attrs.define(eq=False)
class _PhoneCall:
    conversation_id: str
    agent_id: str
    outcome: Outcome
    script: CallScript
    external_number: str
    phone_number_id: str
    initiation: dict[str, Any]
    call_sid: str
    batch_id: str | None = None
    recipient_id: str | None = None
    whatsapp: bool = False
    cancelled: bool = False


@attrs.frozen
class _Due:
    """Something the stand-in's clock will do: a call step, a batch start, a post-call done."""

    kind: StepKind | Literal["batch_start", "conversation_done"]
    ref: str


@attrs.define(eq=False)
class ElevenLabsStandIn:
    """A fake ElevenLabs, served by ``serve_elevenlabs`` or driven by its methods.

    Configuration attributes may be changed at any time; the next request reads them.

    Attributes:
        api_key: When set, every ``/v1`` REST call needs ``xi-api-key`` with this value
            (401 ``invalid_api_key`` otherwise). The WebSocket and ``/_sandbox`` never do.
        webhook_url: Where post-call webhooks go; ``None`` sends none.
        webhook_secret: HMAC secret for ``ElevenLabs-Signature``; ``None`` sends unsigned.
        webhook_events: Settings ``events`` enabled: "transcript" (post_call_transcription)
            and "call_initiation_failure".
        webhook_retry_delays: Seconds (trio clock) before each retry of a non-200 delivery;
            empty means one attempt.
        call_scripts: How calls to each number (or WhatsApp user id) go; others use
            ``CallScript()``: answered, two user lines, derived summary.
        phone_numbers: ``agent_phone_number_id`` -> the agent's E.164 number.
        wall_clock: Source of webhook signature timestamps.
    """

    agents: dict[str, AgentConfig] = attrs.field(factory=default_agents)
    api_key: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_events: frozenset[str] = frozenset({"transcript", "call_initiation_failure"})
    webhook_retry_delays: tuple[float, ...] = ()
    faults: Faults = NO_FAULTS
    agent_faults: dict[str, Faults] = attrs.field(factory=dict)
    call_timing: CallTiming = attrs.field(factory=CallTiming)
    call_scripts: dict[str, CallScript] = attrs.field(factory=dict)
    phone_numbers: dict[str, str] = attrs.field(factory=dict)
    ping_interval_seconds: float = 5.0
    init_wait_seconds: float = 1.0
    signed_url_ttl_seconds: float = 900.0
    epoch_unix: float = attrs.field(factory=lambda: float(int(time.time())))
    wall_clock: Callable[[], float] = time.time
    #: Seeds the ids the stand-in makes (conversations, batches, call SIDs). None: a
    #: different sequence every run, as real ids are; a test that wants the same ids
    #: every run fixes it.
    seed: int | None = None

    sessions: dict[str, LiveSession] = attrs.field(init=False, factory=dict)
    conversations: dict[str, ConversationRecord] = attrs.field(init=False, factory=dict)
    batches: dict[str, BatchRecord] = attrs.field(init=False, factory=dict)
    webhook_deliveries: list[WebhookDelivery] = attrs.field(init=False, factory=list)
    base_url: str | None = attrs.field(init=False, default=None)
    elapsed: float = attrs.field(init=False, default=0.0)
    app: QuartTrio = attrs.field(init=False)

    _ids: IdFactory = attrs.field(init=False)
    _tokens: dict[str, _SignedToken] = attrs.field(init=False, factory=dict)
    _calls: dict[str, _PhoneCall] = attrs.field(init=False, factory=dict)
    _attempts: dict[str, int] = attrs.field(init=False, factory=dict)
    _timeline: list[tuple[float, int, _Due]] = attrs.field(init=False, factory=list)
    _sequence: int = attrs.field(init=False, default=0)
    _next_connection_faults: list[Faults] = attrs.field(init=False, factory=list)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _http: httpx.AsyncClient | None = attrs.field(init=False, default=None)
    _advance_lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)

    def __attrs_post_init__(self) -> None:
        self._ids = IdFactory(self.seed)
        self.app = build_app(self)

    # --- configuration ---------------------------------------------------------------

    def add_agent(self, agent: AgentConfig) -> AgentConfig:
        self.agents[agent.agent_id] = agent
        return agent

    def call_client_tool_on(
        self, script: ClientToolScript, *, agent_id: str = DEFAULT_AGENT_ID
    ) -> AgentConfig:
        """Make an agent call a client tool on user texts that contain ``script.when``
        (from the next turn on, in live sessions too)."""
        agent = self.agent(agent_id)
        return self.add_agent(attrs.evolve(agent, client_tools=(*agent.client_tools, script)))

    def set_faults(
        self, faults: Faults, *, agent_id: str | None = None, conversation_id: str | None = None
    ) -> None:
        """Set faults globally, for one agent, or for one live session."""
        if conversation_id is not None:
            self.session(conversation_id).faults = faults
        elif agent_id is not None:
            self.agent_faults[agent_id] = faults
        else:
            self.faults = faults

    def queue_connection_faults(self, *faults: Faults) -> None:
        """Faults for the next connections, one each, in order (a refusal is spent on its
        handshake; anything else becomes that session's faults)."""
        self._next_connection_faults.extend(faults)

    def faults_for_agent(self, agent_id: str | None) -> Faults:
        if agent_id is not None and agent_id in self.agent_faults:
            return self.agent_faults[agent_id]
        return self.faults

    def faults_for_session(self, session: LiveSession) -> Faults:
        return (
            session.faults
            if session.faults is not None
            else self.faults_for_agent(session.agent_id)
        )

    def session(self, conversation_id: str) -> LiveSession:
        try:
            return self.sessions[conversation_id]
        except KeyError:
            raise RequestError.not_found("session", conversation_id) from None

    def agent(self, agent_id: str | None) -> AgentConfig:
        if not agent_id or agent_id not in self.agents:
            raise RequestError.not_found("agent", agent_id or "(none)")
        return self.agents[agent_id]

    # --- clock -----------------------------------------------------------------------

    @property
    def now_unix(self) -> int:
        """The stand-in clock as unix seconds (``epoch_unix`` + everything advanced)."""
        return int(self.epoch_unix + self.elapsed)

    async def advance(self, seconds: float) -> None:
        """Move the stand-in clock and apply everything that falls due, in time order.

        Returns once the webhooks those steps produced have been delivered (with their
        retries), so a test can assert on the receiver right after.
        """
        if seconds < 0:
            raise ValueError("the clock does not go backwards")
        jobs: list[WebhookJob] = []
        async with self._advance_lock:
            target = self.elapsed + seconds
            while self._timeline and self._timeline[0][0] <= target:
                at, _, due = heapq.heappop(self._timeline)
                self.elapsed = max(self.elapsed, at)
                await self._apply(due, jobs)
            self.elapsed = target
        await self._deliver_all(jobs)

    async def run_clock(self, tick_seconds: float = 1.0) -> None:
        """Advance the stand-in clock with trio's, forever: for demos, never for tests."""
        while True:
            await trio.sleep(tick_seconds)
            await self.advance(tick_seconds)

    def _schedule(self, at: float, due: _Due) -> None:
        self._sequence += 1
        heapq.heappush(self._timeline, (at, self._sequence, due))

    def _spawn_settle(self) -> None:
        """Apply what is due now, in the background (used when a session ends)."""
        if self._nursery is not None:
            self._nursery.start_soon(self.advance, 0.0)

    # --- signed URLs and sessions ------------------------------------------------------

    def consume_refusal(self, agent_id: str | None, *, handshake: bool) -> int | None:
        """The HTTP status to refuse this request with, spending one refusal; else None."""
        if handshake and self._next_connection_faults:
            queued = self._next_connection_faults[0]
            if queued.refuse_status is not None:
                self._next_connection_faults.pop(0)
                return queued.refuse_status
        if agent_id is not None and agent_id in self.agent_faults:
            faults = self.agent_faults[agent_id]
            if faults.refuse_status is not None:
                self.agent_faults[agent_id] = faults.after_refusal()
                return faults.refuse_status
        if self.faults.refuse_status is not None:
            status = self.faults.refuse_status
            self.faults = self.faults.after_refusal()
            return status
        return None

    def signed_url(self, agent_id: str, ws_base: str, *, include_conversation_id: bool) -> str:
        """Issue a ``conversation_signature`` valid for ``signed_url_ttl_seconds`` (trio clock).

        With ``include_conversation_id`` the URL also carries the conversation id the session
        will have, and the signature works once.
        """
        self.agent(agent_id)
        token = self._ids.token()
        conversation_id = self._ids.make("conv") if include_conversation_id else None
        self._tokens[token] = _SignedToken(
            agent_id, trio.current_time() + self.signed_url_ttl_seconds, conversation_id
        )
        query = {"agent_id": agent_id, "conversation_signature": token}
        if conversation_id:
            query["conversation_id"] = conversation_id
        return f"{ws_base}/v1/convai/conversation?{urllib.parse.urlencode(query)}"

    def admit(
        self, query: Mapping[str, str]
    ) -> tuple[AgentConfig, str, str] | proto.ProtocolViolation:
        """Decide whether an upgraded socket may start a session.

        Returns the agent, the conversation id and the ``authorization_method``, or the
        violation to close with (1008: unknown agent, bad or expired signature, a private
        agent reached without one). The reference gives no ``error_type`` for auth failures;
        the stand-in uses ``value_error``.
        """
        agent_id = query.get("agent_id")
        if not agent_id or agent_id not in self.agents:
            return proto.ProtocolViolation("value_error", f"Agent {agent_id or '(none)'} not found")
        agent = self.agents[agent_id]
        signature = query.get("conversation_signature")
        if signature is None:
            if agent.requires_auth:
                return proto.ProtocolViolation(
                    "value_error", "This agent requires a conversation_signature"
                )
            return agent, self._ids.make("conv"), "public"
        token = self._tokens.get(signature)
        if token is None or token.agent_id != agent_id or token.expires_at < trio.current_time():
            return proto.ProtocolViolation(
                "value_error", "Invalid or expired conversation_signature"
            )
        if token.conversation_id is not None:
            del self._tokens[signature]
            return agent, token.conversation_id, "signed_url"
        return agent, self._ids.make("conv"), "signed_url"

    async def serve_socket(
        self,
        websocket: Websocket,
        agent: AgentConfig,
        conversation_id: str,
        auth_method: str,
        query: Mapping[str, str],
    ) -> None:
        """Run one admitted session and file its conversation when it ends."""
        record = ConversationRecord(
            conversation_id=conversation_id,
            agent_id=agent.agent_id,
            agent_name=agent.display_name,
            status="in-progress",
            start_time_unix_secs=self.now_unix,
            authorization_method=auth_method,
        )
        self.conversations[conversation_id] = record
        faults = self._next_connection_faults.pop(0) if self._next_connection_faults else None
        session = LiveSession(
            conversation_id, agent.agent_id, dict(query), record, trio.current_time(), faults
        )
        self.sessions[conversation_id] = session
        settings = SessionSettings(
            self.ping_interval_seconds,
            self.init_wait_seconds,
            self.faults_for_session,
            lambda agent_id: self.agents.get(agent_id, agent),
        )
        try:
            await run_session(websocket, session, agent, settings)
        finally:
            record.call_duration_secs = session.seconds_in_call()
            record.status = "processing"
            record.termination_reason = (
                f"Closed by server: {session.close_reason}"
                if session.closed_by == "server"
                else "Client disconnected"
            )
            self._schedule(
                self.elapsed + self.call_timing.processing_seconds,
                _Due("conversation_done", conversation_id),
            )
            if self.call_timing.processing_seconds <= 0:
                self._spawn_settle()

    async def correct_last_response(self, conversation_id: str, corrected: str) -> None:
        """Send ``agent_response_correction`` on a live session (as after an interruption)."""
        await self.session(conversation_id).correct_last_response(corrected)

    # --- phone calls and batches ----------------------------------------------------------

    def _validate_initiation(self, agent: AgentConfig, initiation: Mapping[str, Any]) -> None:
        violation = proto.check_initiation(
            initiation, agent.allowed_overrides, agent.required_dynamic_variables
        )
        if violation is not None:
            raise RequestError(400, {"status": violation.error_type, "message": violation.message})

    def place_call(
        self,
        agent_id: str,
        to_number: str,
        agent_phone_number_id: str,
        initiation: Mapping[str, Any] | None = None,
    ) -> ConversationRecord:
        """``POST /v1/convai/twilio/outbound-call``: the conversation starts ``initiated``.

        The call then unfolds on the stand-in clock according to ``call_scripts[to_number]``.
        Overrides or dynamic variables the agent would refuse give 400 with the WebSocket's
        error type as ``detail.status`` (the reference does not say; this fails early).
        """
        agent = self.agent(agent_id)
        initiation = dict(initiation or {})
        self._validate_initiation(agent, initiation)
        call = self._new_call(agent, to_number, agent_phone_number_id, initiation, whatsapp=False)
        self._start_call(call, batch=False)
        return self.conversations[call.conversation_id]

    def _new_call(
        self,
        agent: AgentConfig,
        external: str,
        phone_number_id: str,
        initiation: dict[str, Any],
        *,
        whatsapp: bool,
        batch: tuple[str, str] | None = None,
    ) -> _PhoneCall:
        attempt = self._attempts.get(external, 0)
        self._attempts[external] = attempt + 1
        script = self.call_scripts.get(external, DEFAULT_SCRIPT)
        call = _PhoneCall(
            conversation_id=self._ids.make("conv"),
            agent_id=agent.agent_id,
            outcome=script.outcome_for_attempt(attempt),
            script=script,
            external_number=external,
            phone_number_id=phone_number_id,
            initiation=initiation,
            call_sid=self._ids.call_sid(),
            batch_id=batch[0] if batch else None,
            recipient_id=batch[1] if batch else None,
            whatsapp=whatsapp,
        )
        self._calls[call.conversation_id] = call
        return call

    def _start_call(self, call: _PhoneCall, *, batch: bool, ringing_timeout: float = 60.0) -> None:
        steps = plan_call(call.outcome, self.call_timing, ringing_timeout, batch=batch)
        for step in steps:
            if step.offset == 0 and step.kind == "initiated":
                self._call_initiated(call)
            else:
                self._schedule(self.elapsed + step.offset, _Due(step.kind, call.conversation_id))

    def submit_batch(self, body: Mapping[str, Any]) -> BatchRecord:
        """``POST /v1/convai/batch-calling/submit``.

        The batch starts ``pending`` and becomes ``in_progress`` at ``scheduled_time_unix``
        (now if null) on the stand-in clock. Recipients are called in order, at most
        ``target_concurrency_limit`` at a time (unlimited if null). A recipient whose
        overrides or dynamic variables the agent refuses fails the whole batch at once
        (status ``failed``, every recipient ``failed``), as the batch docs describe for CSV
        overrides.
        """
        missing = [k for k in ("call_name", "agent_id", "recipients") if body.get(k) is None]
        if missing:
            raise RequestError.missing(*missing)
        agent = self.agent(str(body["agent_id"]))
        recipients_in = body["recipients"]
        if not isinstance(recipients_in, list):
            raise RequestError.invalid(["body", "recipients"], "Input should be a valid list")
        now = self.now_unix
        recipients: list[RecipientRecord] = []
        refused = False
        seen: set[str] = set()
        for index, item in enumerate(recipients_in):
            if not isinstance(item, dict) or not (
                item.get("phone_number") or item.get("whatsapp_user_id")
            ):
                raise RequestError.invalid(
                    ["body", "recipients", str(index)],
                    "A recipient needs phone_number or whatsapp_user_id",
                )
            initiation = item.get("conversation_initiation_client_data")
            if initiation is not None and proto.check_initiation(
                initiation, agent.allowed_overrides, agent.required_dynamic_variables
            ):
                refused = True
            if initiation is None and agent.required_dynamic_variables:
                refused = True
            given = item.get("id")
            rid = given if isinstance(given, str) and given and given not in seen else None
            rid = rid or self._ids.make("btcalrcp")
            seen.add(rid)
            recipients.append(
                RecipientRecord(
                    id=rid,
                    phone_number=item.get("phone_number"),
                    whatsapp_user_id=item.get("whatsapp_user_id"),
                    status="failed" if refused else "pending",
                    created_at_unix=now,
                    updated_at_unix=now,
                    conversation_initiation_client_data=initiation,
                )
            )
        scheduled = body.get("scheduled_time_unix")
        scheduled_at = int(scheduled) if isinstance(scheduled, int | float) else now
        telephony = {"ringing_timeout_secs": 60, "twilio_call_recording_enabled": False}
        telephony.update(body.get("telephony_call_config") or {})
        batch = BatchRecord(
            id=self._ids.make("btcal"),
            name=str(body["call_name"]),
            agent_id=agent.agent_id,
            agent_name=agent.display_name,
            created_at_unix=now,
            scheduled_time_unix=scheduled_at,
            recipients=recipients,
            phone_number_id=body.get("agent_phone_number_id"),
            whatsapp_params=body.get("whatsapp_params"),
            branch_id=body.get("branch_id"),
            environment=body.get("environment"),
            timezone=body.get("timezone"),
            telephony_call_config=telephony,
            target_concurrency_limit=body.get("target_concurrency_limit"),
            last_updated_at_unix=now,
        )
        if refused:
            batch.status = "failed"
            for recipient in recipients:
                recipient.status = "failed"
        else:
            self._schedule(
                max(self.elapsed, scheduled_at - self.epoch_unix), _Due("batch_start", batch.id)
            )
        self.batches[batch.id] = batch
        return batch

    def batch(self, batch_id: str) -> BatchRecord:
        try:
            return self.batches[batch_id]
        except KeyError:
            raise RequestError.not_found("batch", batch_id) from None

    def cancel_batch(self, batch_id: str) -> BatchRecord:
        """Cancel: every recipient not yet finished is ``cancelled``, calls in flight end."""
        batch = self.batch(batch_id)
        now = self.now_unix
        for recipient in batch.recipients:
            if recipient.status in RECIPIENT_TERMINAL:
                continue
            recipient.status = "cancelled"
            recipient.updated_at_unix = now
        for call in self._calls.values():
            if call.batch_id != batch_id or call.cancelled:
                continue
            call.cancelled = True
            record = self.conversations.get(call.conversation_id)
            if record is not None and record.status in ("initiated", "in-progress"):
                record.status = "failed"
                record.termination_reason = "Batch call cancelled"
        batch.status = "cancelled"
        batch.last_updated_at_unix = now
        return batch

    def retry_batch(self, batch_id: str) -> BatchRecord:
        """Retry: ``failed`` (including no-answer) and ``voicemail`` recipients go back to
        ``pending`` and are called again; ``retry_count`` goes up. The next outcome of each
        number comes from its script's next entry."""
        batch = self.batch(batch_id)
        now = self.now_unix
        again = [r for r in batch.recipients if r.status in ("failed", "voicemail")]
        for recipient in again:
            recipient.status = "pending"
            recipient.conversation_id = None
            recipient.updated_at_unix = now
        batch.retry_count += 1
        batch.last_updated_at_unix = now
        if again:
            batch.status = "in_progress"
            self._fill_slots(batch)
        return batch

    def delete_batch(self, batch_id: str) -> None:
        """Delete the batch and its recipients; its conversations stay in history."""
        self.batch(batch_id)
        for call in self._calls.values():
            if call.batch_id == batch_id:
                call.cancelled = True
        del self.batches[batch_id]

    def _fill_slots(self, batch: BatchRecord) -> None:
        if batch.status != "in_progress":
            return
        limit = batch.target_concurrency_limit or len(batch.recipients) or 1
        active = sum(
            1 for r in batch.recipients if r.status in ("dispatched", "initiated", "in_progress")
        )
        agent = self.agents.get(batch.agent_id)
        for recipient in batch.recipients:
            if active >= limit or agent is None:
                break
            if recipient.status != "pending":
                continue
            recipient.status = "dispatched"
            recipient.updated_at_unix = self.now_unix
            call = self._new_call(
                agent,
                recipient.external_id,
                batch.phone_number_id or "",
                dict(recipient.conversation_initiation_client_data or {}),
                whatsapp=recipient.phone_number is None,
                batch=(batch.id, recipient.id),
            )
            self._start_call(
                call,
                batch=True,
                ringing_timeout=float(batch.telephony_call_config.get("ringing_timeout_secs", 60)),
            )
            active += 1
        self._settle_batch(batch)

    def _settle_batch(self, batch: BatchRecord) -> None:
        if batch.status == "in_progress" and all(
            r.status in RECIPIENT_TERMINAL for r in batch.recipients
        ):
            batch.status = "completed"
            batch.last_updated_at_unix = self.now_unix

    def _recipient(self, call: _PhoneCall) -> RecipientRecord | None:
        batch = self.batches.get(call.batch_id or "")
        if batch is None:
            return None
        return next((r for r in batch.recipients if r.id == call.recipient_id), None)

    def _call_initiated(self, call: _PhoneCall) -> None:
        agent = self.agents.get(call.agent_id)
        record = ConversationRecord(
            conversation_id=call.conversation_id,
            agent_id=call.agent_id,
            agent_name=agent.display_name if agent else call.agent_id,
            status="initiated",
            start_time_unix_secs=self.now_unix,
            initiation=call.initiation,
            user_id=call.initiation.get("user_id"),
            phone_call=None
            if call.whatsapp
            else PhoneCallInfo(
                phone_number_id=call.phone_number_id,
                agent_number=self.phone_numbers.get(call.phone_number_id, DEFAULT_AGENT_NUMBER),
                external_number=call.external_number,
                call_sid=call.call_sid,
            ),
            batch_call=(call.batch_id, call.recipient_id)
            if call.batch_id and call.recipient_id
            else None,
            whatsapp_user_id=call.external_number if call.whatsapp else None,
            source="whatsapp" if call.whatsapp else "twilio",
            authorization_method="whatsapp" if call.whatsapp else "public",
        )
        self.conversations[call.conversation_id] = record
        recipient = self._recipient(call)
        if recipient is not None and recipient.status != "cancelled":
            recipient.conversation_id = call.conversation_id
        self._set_recipient(call, "initiated")

    def _set_recipient(self, call: _PhoneCall, status: Any) -> None:
        recipient = self._recipient(call)
        if recipient is None or recipient.status == "cancelled":
            return
        recipient.status = status
        recipient.updated_at_unix = self.now_unix
        batch = self.batches[call.batch_id or ""]
        batch.last_updated_at_unix = self.now_unix
        if status in RECIPIENT_TERMINAL:
            self._fill_slots(batch)

    async def _apply(self, due: _Due, jobs: list[WebhookJob]) -> None:
        if due.kind == "batch_start":
            batch = self.batches.get(due.ref)
            if batch is not None and batch.status == "pending":
                batch.status = "in_progress"
                batch.last_updated_at_unix = self.now_unix
                self._fill_slots(batch)
            return
        if due.kind == "conversation_done":
            record = self.conversations.get(due.ref)
            if record is not None and record.status == "processing":
                self._finish(record, None, "success", jobs)
            return
        call = self._calls.get(due.ref)
        if call is None or call.cancelled:
            return
        record = self.conversations.get(call.conversation_id)
        if due.kind == "initiated":
            self._call_initiated(call)
        elif record is None:
            return
        elif due.kind == "answered":
            record.status = "in-progress"
            record.has_audio = True
            self._set_recipient(call, "in_progress")
        elif due.kind == "ended":
            await self._write_call_transcript(call, record)
            record.status = "processing"
            record.call_duration_secs = int(self.call_timing.talk_seconds)
            self._set_recipient(call, "completed" if call.outcome == "completed" else "voicemail")
        elif due.kind == "done":
            self._finish(
                record,
                call.script.summary,
                "success" if call.outcome == "completed" else "failure",
                jobs,
            )
        elif due.kind == "failed":
            reason = failure_reason(call.outcome)
            record.status = "failed"
            record.termination_reason = f"Call failed: {reason}"
            self._set_recipient(call, "failed")
            jobs.append(self._failure_job(call, record, reason))

    async def _write_call_transcript(self, call: _PhoneCall, record: ConversationRecord) -> None:
        agent = self.agents.get(call.agent_id)
        variables = {
            "system__conversation_id": call.conversation_id,
            "system__agent_id": call.agent_id,
            "system__called_number": call.external_number,
            **(call.initiation.get("dynamic_variables") or {}),
        }
        first = proto.override_value(call.initiation, "agent.first_message")
        opening = proto.render_template(
            str(first or (agent.first_message if agent else "")), variables
        )
        turns: list[Turn] = []
        step = max(1, int(self.call_timing.talk_seconds) // (2 * len(call.script.user_turns) + 2))
        clock = 0
        if opening:
            record.transcript.append(TranscriptEntry("agent", opening, clock, "audio"))
            turns.append(Turn("agent", opening))
        if call.outcome == "voicemail":
            record.termination_reason = "Voicemail detected"
            return
        for line in call.script.user_turns:
            clock += step
            context = SessionContext(
                call.agent_id, call.conversation_id, variables, (), tuple(turns)
            )
            record.transcript.append(TranscriptEntry("user", line, clock, "audio"))
            turns.append(Turn("user", line))
            answer = await ask_brain(agent.brain if agent else context_brain, context, line)
            clock += step
            record.transcript.append(TranscriptEntry("agent", answer, clock, "audio"))
            turns.append(Turn("agent", answer))
        record.termination_reason = "Call ended by remote party"

    def _finish(
        self,
        record: ConversationRecord,
        summary: str | None,
        successful: Literal["success", "failure", "unknown"],
        jobs: list[WebhookJob],
    ) -> None:
        record.analysis = Analysis(
            call_successful=successful,
            transcript_summary=summary
            if summary is not None
            else summarize_transcript(record.transcript),
        )
        record.status = "done"
        jobs.append(
            WebhookJob(
                "post_call_transcription",
                record.conversation_id,
                record.agent_id,
                conversation_json(record),
                self.now_unix,
            )
        )

    def _failure_job(self, call: _PhoneCall, record: ConversationRecord, reason: str) -> WebhookJob:
        agent_number = self.phone_numbers.get(call.phone_number_id, DEFAULT_AGENT_NUMBER)
        data = {
            "agent_id": call.agent_id,
            "conversation_id": call.conversation_id,
            "failure_reason": reason,
            "metadata": {
                "type": "twilio",
                "body": {
                    "CallSid": call.call_sid,
                    "CallStatus": twilio_call_status(call.outcome),
                    "SipResponseCode": "480" if call.outcome == "no-answer" else "500",
                    "To": call.external_number,
                    "From": agent_number,
                    "Direction": "outbound-api",
                },
            },
        }
        return WebhookJob(
            "call_initiation_failure", call.conversation_id, call.agent_id, data, self.now_unix
        )

    async def complete_call(
        self,
        external_number: str,
        *,
        agent_id: str = DEFAULT_AGENT_ID,
        user_turns: tuple[str, ...] | None = None,
        summary: str | None = None,
        dynamic_variables: Mapping[str, Any] | None = None,
        agent_phone_number_id: str = "phnum_sandbox",
    ) -> ConversationRecord:
        """A phone call that has just finished: the conversation is ``done`` and the
        ``post_call_transcription`` webhook is delivered before this returns.

        The shortcut for tests of the webhook receiver: no batch, no clock.
        """
        agent = self.agent(agent_id)
        script = CallScript(
            user_turns=user_turns if user_turns is not None else DEFAULT_SCRIPT.user_turns,
            summary=summary,
        )
        initiation = {"dynamic_variables": dict(dynamic_variables or {})}
        call = self._new_call(
            agent, external_number, agent_phone_number_id, initiation, whatsapp=False
        )
        call.outcome, call.script = "completed", script
        self._call_initiated(call)
        record = self.conversations[call.conversation_id]
        record.has_audio = True
        await self._write_call_transcript(call, record)
        record.call_duration_secs = int(self.call_timing.talk_seconds)
        jobs: list[WebhookJob] = []
        self._finish(record, summary, "success", jobs)
        call.cancelled = True
        await self._deliver_all(jobs)
        return record

    async def fail_call(
        self,
        external_number: str,
        *,
        agent_id: str = DEFAULT_AGENT_ID,
        outcome: Literal["failed", "no-answer"] = "no-answer",
        agent_phone_number_id: str = "phnum_sandbox",
    ) -> ConversationRecord:
        """A call that never connected: conversation ``failed``, ``call_initiation_failure``
        delivered before this returns."""
        agent = self.agent(agent_id)
        call = self._new_call(agent, external_number, agent_phone_number_id, {}, whatsapp=False)
        call.outcome = outcome
        self._call_initiated(call)
        record = self.conversations[call.conversation_id]
        reason = failure_reason(outcome)
        record.status = "failed"
        record.termination_reason = f"Call failed: {reason}"
        call.cancelled = True
        await self._deliver_all([self._failure_job(call, record, reason)])
        return record

    # --- webhooks --------------------------------------------------------------------

    async def _deliver_all(self, jobs: list[WebhookJob]) -> None:
        wanted = [
            job
            for job in jobs
            if self.webhook_url is not None and EVENT_SETTING[job.event_type] in self.webhook_events
        ]
        if not wanted:
            return
        if self._http is not None:
            await self._deliver_with(self._http, wanted)
        else:  # driven without serve_elevenlabs: a client for this batch of jobs only
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS) as client:
                await self._deliver_with(client, wanted)

    async def _deliver_with(self, client: httpx.AsyncClient, jobs: list[WebhookJob]) -> None:
        for job in jobs:
            url = self.webhook_url
            if url is None:
                return
            copies = 2 if self.faults_for_agent(job.agent_id).duplicate_webhooks else 1
            await deliver(
                client,
                job,
                url=url,
                secret=self.webhook_secret,
                retry_delays=self.webhook_retry_delays,
                copies=copies,
                wall_clock=self.wall_clock,
                record=self.webhook_deliveries.append,
            )


@asynccontextmanager
async def serve_elevenlabs(
    standin: ElevenLabsStandIn | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[ElevenLabsStandIn]:
    """Serve the stand-in (HTTP and WebSocket on one port) until the block ends.

    Sets ``standin.base_url`` (``http://127.0.0.1:PORT``; the SDK derives ``ws://`` from it).
    Background work (webhooks after a session ends) runs in a nursery owned by this block.
    """
    standin = standin if standin is not None else ElevenLabsStandIn()
    async with (
        httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS) as http,
        trio.open_nursery() as nursery,
    ):
        standin._nursery = nursery
        standin._http = http
        try:
            async with serve_standin(standin.app, host, port) as base_url:
                standin.base_url = base_url
                try:
                    yield standin
                finally:
                    standin.base_url = None
        finally:
            standin._nursery = None
            standin._http = None
            nursery.cancel_scope.cancel()
