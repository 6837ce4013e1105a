"""The phone actor: one per WhatsApp user, continuing the call's conversation.

It owns the person's agent session (a WebSocket) and decides every step from its stream
``phone-+E164``. Each wake-up it folds what is new in the log, asks the rules
(``followup.conversation.next_step``) what to do, does it, records the outcome, and asks
again until the conversation waits for the person. The mailbox only says "look at the
log": a web handler appends ``MessageReceived`` and then notifies; a crash, a restart or a
passivation loses nothing, because ``activate`` folds the whole stream and resumes.

Side effects follow the outbox rule. A reply is first recorded as ``ReplyRequested`` (all
its parts), then sent part by part, each outcome recorded. A reply this activation did not
request itself may have been sent by a previous one that died before recording it; such a
part is looked up in Twilio first (``find_sent``) and only sent if it is not there.

The agent session is a cache: it is opened on the first need, primed with the call summary
and the conversation so far, and reopened the same way whenever it closes. A turn that gets
no usable answer (timeout, empty, closed, unavailable) is answered with the configured
fallback: every inbound message gets exactly one answer, and nothing empty is ever sent.

People in control (``followup.conversation``, "Who may speak"): an opt-out keyword is
confirmed once and silences everything after it; Twilio saying the person cannot receive
stops all sends; while a person at the business has the conversation the agent is not
asked and its session is closed, so that after the hand-back a new session is primed with
the whole conversation, that person's messages included. The agent asks for a person by
calling its hand-off client tool (``PhoneSettings.handoff_tool``), answered by the session
and recorded as ``HumanRequested``.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import httpx
import trio

from actors.groups import lone_leaf
from actors.runtime import ActorContext, ActorSystem
from clients.elevenlabs.protocol import ClientToolCall
from clients.elevenlabs.session import (
    AgentAnswer,
    AgentSession,
    AgentSessionClosed,
    AgentSessionConfig,
    AgentSessionError,
    AgentTurnTimeout,
    AgentUnavailable,
)
from clients.twilio.content import EmptyMessage, MessageTooLong, split_message
from clients.twilio.recipients import recipient_error
from clients.twilio.sender import TwilioRejected, TwilioUnavailable, WhatsAppSender
from events.codec import UnknownEventType, decode, to_new_event
from events.conversation import (
    AgentAnswered,
    AgentAsked,
    AgentReplySuppressed,
    AgentSessionOpened,
    AgentTurnFailed,
    FallbackReason,
    FirstMessageSkipped,
    HandedBack,
    HumanRequested,
    OptedIn,
    OptedOut,
    RecipientUnreachable,
    ReplyDelayed,
    ReplyFailed,
    ReplyKind,
    ReplyRequested,
    ReplySent,
    ReplyWithdrawn,
    Template,
    phone_stream,
)
from events.conversation import (
    AgentSessionClosed as SessionClosedEvent,
)
from events.phones import InvalidPhone
from events.store import EventStore, WrongExpectedVersion
from followup.conversation import (
    DEFAULT_RULES,
    AskAgent,
    ConversationState,
    DeliverReply,
    NoticeMedia,
    OptIn,
    OptOut,
    RequestHuman,
    Rules,
    SendFirstMessage,
    SendMissedCallMessage,
    SendOperatorMessage,
    SkipFirstMessage,
    Step,
    SuppressTurn,
    WithdrawReply,
    apply,
    auto_return_at,
    compose_context,
    first_message_template,
    first_message_text,
    in_service_window,
    may_speak,
    next_step,
)

logger = logging.getLogger(__name__)

#: Event types only the phone actor writes. Anything else may be appended to the stream by
#: others (webhooks: messages, calls, delivery statuses) and never invalidates a decision.
#:
#: The facts operators append through the API or the console (``HumanTookOver``,
#: ``HandedBack``, ``OperatorMessageRequested``) and Twilio's ``RecipientUnreachable`` (a
#: status callback records it; so does this actor, from a send Twilio refused) are not
#: decisions of this actor, and are deliberately not listed: were they, an operator taking
#: a conversation over while the agent thinks would make the actor's next append a
#: ``DecisionConflict``, counted as another worker's decision, and drop the step it was
#: taking without a trace. Instead ``_record`` folds them and appends after them, like any
#: outside fact, and the fold decides what goes out: a reply requested after a take-over or
#: an opt-out is marked for withdrawal as it is folded (``conversation.silence_reason``) and
#: withdrawn, recorded as ``ReplyWithdrawn``, before anything else is sent. The one decision
#: such a fact can make wrong before it is recorded is the automatic hand-back, which
#: re-checks itself after folding them (``Superseded``).
DECISIONS = frozenset(
    {
        "AgentSessionOpened", "AgentSessionClosed", "AgentAsked", "AgentAnswered",
        "AgentTurnFailed", "ReplyRequested", "ReplySent", "ReplyFailed", "ReplyDelayed",
        "OptedOut", "OptedIn", "HumanRequested", "AgentReplySuppressed", "ReplyWithdrawn",
        "FirstMessageSkipped",
    }
)  # fmt: skip
#: What the session answers the agent's hand-off tool call with: the result is read by the
#: agent's LLM, which usually says a last sentence about it.
HANDOFF_TOOL_RESULT = (
    "A person from the business will take over this conversation shortly. Tell the person "
    "so in one short sentence and do not answer anything else."
)
#: How far before an intent's time a reconciling look-up searches (clock skew with Twilio).
RECONCILE_SKEW = timedelta(minutes=2)


@attrs.frozen
class Wake:
    """Your stream may have grown: the only message the phone actor needs.

    A web handler that has just appended a fact says which version it got and hands the
    event along: when that is the very next version the actor folds it without reading
    the log, and when the actor is already past it the wake costs nothing. Without them
    (timers, resumption) the actor reads what is new.
    """

    version: int | None = None
    event: Any = None


class Superseded(RuntimeError):
    """What was about to be recorded no longer holds for the log as it is now (an operator
    acted meanwhile): nothing was recorded; decide again from the log."""


class DecisionConflict(RuntimeError):
    """Another writer recorded decisions in this phone's stream: re-fold and decide again.

    With one owner per phone this does not happen. Until phones have a single owner across
    processes (two Hypercorn workers on one database each run an actor for the phone), it
    is an expected outcome: the actor has already folded the other writer's decisions when
    this is raised, so it counts the conflict, says so in one line, and decides again from
    the log (the step it was taking is dropped; the other writer took it).
    """


@attrs.define
class ConflictCount:
    """How many times this process's phone actors found another writer's decisions first."""

    decision_conflicts: int = 0


@attrs.frozen
class PhoneSettings:
    """What the phone actor needs to know about the outside world."""

    elevenlabs_base_url: str
    elevenlabs_api_key: str | None = attrs.field(repr=False)
    default_agent_id: str
    first_message_text: str
    fallback_text: str
    media_notice_text: str
    first_message_template_sid: str | None = None
    #: Sent after a call that did not connect, when the deployment follows those up.
    missed_call_text: str = ""
    turn_timeout: float = 30.0
    #: How soon to try a reply again after Twilio stayed unavailable past its retry budget.
    reply_retry_delay: float = 30.0
    #: After the agent could not be reached, how long new turns get the fallback at once
    #: instead of another connection attempt (does not apply to a closed session).
    first_message_wait: float = 1.0
    #: How long an agent turn may take before its ``AgentAsked`` is recorded on its own.
    #: A quicker answer is recorded together with the question, in one append: an agent
    #: that answers at once then waits for no commit but the reply's. A crash before
    #: either is recorded leaves the messages unanswered in the log, and they are asked
    #: again, as a recorded but unanswered turn would be.
    ask_record_delay: float = 0.5
    #: Opt-out, opt-in and hand-off keywords (``conversation.Rules``).
    rules: Rules = DEFAULT_RULES
    optout_confirmation_text: str = (
        "You won't get any more messages from us here. Reply START to hear from us again."
    )
    optin_confirmation_text: str = "Welcome back! You'll get our messages here again."
    #: Sent when the conversation starts waiting for a person at the business (asked for
    #: by the person's keyword, or by the agent without words of its own).
    handoff_notice_text: str = "Thanks! A person from our team will answer you here shortly."
    #: In place of a name the call did not know ("Hi there"; Spanish "Hola de nuevo").
    unnamed: str = "there"
    #: The template's summary variable after a call that did not connect.
    missed_call_summary: str = "We tried to reach you by phone."
    #: The agent's client tool that asks for a person (``None``: the agent cannot).
    handoff_tool: str | None = "handoff_to_human"
    #: Seconds without anything from a person at the business before a conversation
    #: waiting for (or held by) one goes back to the bot; ``None``: never (the default).
    auto_return_after: float | None = None


@attrs.frozen
class PhoneDependencies:
    """Shared by every phone actor of a process."""

    settings: PhoneSettings
    http: httpx.AsyncClient
    sender: WhatsAppSender
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    conflicts: ConflictCount = attrs.field(factory=ConflictCount)


class PhoneActor:
    """The conversation with one phone number. Made fresh for every activation."""

    def __init__(self, phone: str, deps: PhoneDependencies) -> None:
        self.phone = phone
        self.stream = phone_stream(phone)
        self.deps = deps
        self.state = ConversationState(phone)
        self.session: AgentSession | None = None
        #: Replies requested by this activation: known not to be at Twilio yet.
        self._fresh_replies: set[str] = set()
        #: A first message went out: open the agent session before the person answers.
        self._prewarm = False
        #: Hand-off tool calls the session answered after a turn had ended.
        self._late_handoffs: list[ClientToolCall] = []

    # -- the runtime's hooks -------------------------------------------------------------
    async def activate(self, ctx: ActorContext[Wake]) -> None:
        await self._catch_up(ctx)
        settings = self.deps.settings
        if (
            next_step(self.state, settings.rules) is not None
            or auto_return_at(self.state, settings.auto_return_after) is not None
        ):
            # Work in hand, or an automatic hand-back to arm again (timers die with us).
            ctx.set_timer("resume", 0, Wake())

    async def handle(self, message: Wake, ctx: ActorContext[Wake]) -> None:
        if message.event is not None and message.version == self.state.version + 1:
            apply(self.state, message.event)
            self.state.version = message.version
        elif message.version is None or message.version > self.state.version:
            await self._catch_up(ctx)
        if self._late_handoffs:
            await self._record_late_handoffs(ctx)
        while True:
            if not await self._take_steps(ctx):
                return  # Twilio unavailable: a timer brings us back
            if not await self._hand_back_if_due(ctx):
                break
        if not may_speak(self.state, "agent"):
            # Nobody will ask this session anything until the bot has the conversation
            # again, and then it must be primed with everything said meanwhile.
            await self._close_session(ctx, "the bot may not speak in this conversation now")
        elif self._prewarm:
            await self._open_session_ahead(ctx)
        self._prewarm = False

    async def _take_steps(self, ctx: ActorContext[Wake]) -> bool:
        """Take steps until the conversation waits; ``False`` when a timer must resume."""
        while (step := next_step(self.state, self.deps.settings.rules)) is not None:
            try:
                if not await self._take_step(step, ctx):
                    return False
            except (DecisionConflict, Superseded, BaseExceptionGroup) as error:
                # Raised inside a turn's nursery, the conflict arrives wrapped in a group.
                conflict = lone_leaf(error)
                if isinstance(conflict, Superseded):
                    logger.info("%s: %s; deciding again from the log", self.stream, conflict)
                    continue
                if not isinstance(conflict, DecisionConflict):
                    raise
                self.deps.conflicts.decision_conflicts += 1
                logger.info("%s; deciding again from the log", conflict)
        return True

    async def _hand_back_if_due(self, ctx: ActorContext[Wake]) -> bool:
        """The automatic hand-back: when it is due, record it (``True``: the bot has work
        again); when it is not yet, arm the timer that brings us back then."""
        after = self.deps.settings.auto_return_after
        due = auto_return_at(self.state, after)
        if due is None:
            ctx.cancel_timer("auto-return")
            return False
        now = self._now()
        if now < due:
            ctx.set_timer("auto-return", (due - now).total_seconds(), Wake())
            return False

        def still_due(state: ConversationState) -> bool:
            # An operator who wrote or took over meanwhile restarts the wait.
            moved = auto_return_at(state, after)
            return moved is not None and moved <= now

        with contextlib.suppress(Superseded):  # then the loop sees the new wait
            await self._record(
                ctx,
                HandedBack(
                    at=now,
                    operator=None,
                    reason=f"no reply from a person at the business for {after:g} s",
                ),
                still=still_due,
            )
        return True

    async def _take_step(self, step: Step, ctx: ActorContext[Wake]) -> bool:
        """Take one step; ``False`` when it must wait for a timer."""
        settings = self.deps.settings
        match step:
            case DeliverReply():
                return await self._deliver(step, ctx)
            case WithdrawReply():
                await self._withdraw(step, ctx)
            case SendFirstMessage():
                await self._request_first_message(step, ctx)
                self._prewarm = True
            case SendMissedCallMessage():
                await self._request_missed_call_message(step, ctx)
            case NoticeMedia():
                await self._request_reply(
                    ctx,
                    kind="media_notice",
                    text=settings.media_notice_text,
                    in_reply_to=tuple(m.message_sid for m in step.messages),
                )
            case AskAgent():
                await self._take_turn(step, ctx)
            case OptOut(message, keyword, dropped):
                logger.info("%s opted out (%r)", self.stream, keyword)
                await self._request_reply(
                    ctx,
                    kind="optout_confirmation",
                    text=settings.optout_confirmation_text,
                    in_reply_to=(message.message_sid,),
                    before=[OptedOut(message.message_sid, keyword, self._now(), dropped)],
                )
            case OptIn(message, keyword, dropped):
                logger.info("%s opted in again (%r)", self.stream, keyword)
                await self._request_reply(
                    ctx,
                    kind="optin_confirmation",
                    text=settings.optin_confirmation_text,
                    in_reply_to=(message.message_sid,),
                    before=[OptedIn(message.message_sid, keyword, self._now(), dropped)],
                )
            case RequestHuman(message, keyword, answered):
                asked = HumanRequested(
                    by="customer",
                    reason=f"the person wrote {message.body.strip()[:80]!r}",
                    at=self._now(),
                    message_sid=message.message_sid,
                )
                await self._request_reply(
                    ctx,
                    kind="handoff_notice",
                    text=settings.handoff_notice_text,
                    in_reply_to=answered,
                    before=[asked],
                )
            case SendOperatorMessage(request):
                await self._request_reply(
                    ctx,
                    kind="operator",
                    text=request.text if request.template is None else None,
                    template=request.template,
                    operator=request.operator,
                    operator_request_id=request.request_id,
                )
            case SuppressTurn(turn, reason):
                await self._record(ctx, AgentReplySuppressed(turn.turn_id, "", reason, self._now()))
            case SkipFirstMessage(call_conversation_id, reason):
                logger.info("%s: no first message after %s (%s)", self.stream,
                            call_conversation_id, reason)  # fmt: skip
                await self._record(
                    ctx, FirstMessageSkipped(call_conversation_id, reason, self._now())
                )
        return True

    async def deactivate(self, ctx: ActorContext[Wake]) -> None:
        if self.session is not None and not self.session.closed:
            session, self.session = self.session, None
            await session.aclose()
            await self._record(
                ctx,
                SessionClosedEvent(
                    agent_conversation_id=session.conversation_id,
                    code=1000,
                    reason="passivated",
                    likely_cause=None,
                    closed_at=self._now(),
                ),
            )

    # -- the log -------------------------------------------------------------------------
    async def _catch_up(self, ctx: ActorContext[Wake]) -> list[Any]:
        """Fold what the stream holds past our version; returns the new records' types."""
        records = await ctx.store.read_stream(self.stream, from_version=self.state.version + 1)
        for record in records:
            apply(self.state, decode(record))
            self.state.version = record.version
        return [record.type for record in records]

    async def _record(
        self,
        ctx: ActorContext[Wake],
        *events: Any,
        still: Callable[[ConversationState], bool] | None = None,
    ) -> None:
        """Append our decisions after what we folded; facts appended meanwhile are folded
        first (they never invalidate a decision: see ``DECISIONS``), decisions by anyone
        else are a conflict. ``still``: a decision that an outside fact can make wrong
        checks itself against the state after them (``Superseded`` when it fails)."""
        new = [to_new_event(event, metadata={"actor": "phone"}) for event in events]
        while True:
            try:
                result = await ctx.store.append(self.stream, new, self.state.version)
            except WrongExpectedVersion:
                types = await self._catch_up(ctx)
                if DECISIONS.intersection(types):
                    raise DecisionConflict(
                        f"{self.stream}: decisions recorded by another writer: {types}"
                    ) from None
                if still is not None and not still(self.state):
                    raise Superseded(f"{types} changed what was to be recorded") from None
                continue
            break
        for event in events:
            apply(self.state, event)
        self.state.version = result.version

    def _now(self) -> datetime:
        return self.deps.wall_clock()

    # -- steps ---------------------------------------------------------------------------
    async def _request_first_message(self, step: SendFirstMessage, ctx: ActorContext[Wake]) -> None:
        settings = self.deps.settings
        now = self._now()
        template_sid = settings.first_message_template_sid
        if template_sid and not in_service_window(self.state, now):
            await self._request_reply(
                ctx,
                kind="first_message",
                template=first_message_template(step.call, template_sid, settings.unnamed),
                call_conversation_id=step.call.conversation_id,
            )
            return
        await self._request_reply(
            ctx,
            kind="first_message",
            text=first_message_text(step.call, settings.first_message_text, settings.unnamed),
            call_conversation_id=step.call.conversation_id,
        )

    async def _request_missed_call_message(
        self, step: SendMissedCallMessage, ctx: ActorContext[Wake]
    ) -> None:
        """After a call that did not connect: the template outside the 24-hour window (if
        one is configured), the configured text otherwise."""
        settings = self.deps.settings
        template_sid = settings.first_message_template_sid
        if template_sid and not in_service_window(self.state, self._now()):
            template = Template(
                template_sid, {"1": settings.unnamed, "2": settings.missed_call_summary}
            )
            await self._request_reply(
                ctx,
                kind="first_message",
                template=template,
                call_conversation_id=step.call.conversation_id,
            )
            return
        await self._request_reply(
            ctx,
            kind="first_message",
            text=settings.missed_call_text,
            call_conversation_id=step.call.conversation_id,
        )

    async def _request_reply(
        self,
        ctx: ActorContext[Wake],
        *,
        kind: ReplyKind,
        text: str | None = None,
        template: Template | None = None,
        in_reply_to: Sequence[str] = (),
        turn_id: str | None = None,
        call_conversation_id: str | None = None,
        operator: str | None = None,
        operator_request_id: str | None = None,
        before: Sequence[Any] = (),
        after: Sequence[Any] = (),
    ) -> None:
        request = self._reply(
            kind,
            text=text,
            template=template,
            in_reply_to=in_reply_to,
            turn_id=turn_id,
            call_conversation_id=call_conversation_id,
            operator=operator,
            operator_request_id=operator_request_id,
        )
        await self._record(ctx, *before, request, *after)

    def _reply(
        self,
        kind: ReplyKind,
        *,
        text: str | None = None,
        template: Template | None = None,
        in_reply_to: Sequence[str] = (),
        turn_id: str | None = None,
        call_conversation_id: str | None = None,
        operator: str | None = None,
        operator_request_id: str | None = None,
    ) -> ReplyRequested:
        """A reply intent, known to this activation as not yet at Twilio."""
        parts: tuple[str, ...] = ()
        if template is None:
            parts = tuple(split_message(text or ""))
            if not parts:  # the rules never get here with empty text; keep the invariant
                parts = tuple(split_message(self.deps.settings.fallback_text))
        reply_id = uuid.uuid4().hex
        self._fresh_replies.add(reply_id)
        return ReplyRequested(
            reply_id=reply_id,
            kind=kind,
            parts=parts,
            requested_at=self._now(),
            in_reply_to=tuple(in_reply_to),
            turn_id=turn_id,
            template=template,
            call_conversation_id=call_conversation_id,
            to=self.state.reply_address,
            operator=operator,
            operator_request_id=operator_request_id,
        )

    async def _deliver(self, step: DeliverReply, ctx: ActorContext[Wake]) -> bool:
        """Send one part of a reply (after looking it up, if we did not request it)."""
        request = step.pending.request
        sender = self.deps.sender
        body = None if request.template is not None else request.parts[step.part]
        to = request.to or self.phone
        if request.reply_id not in self._fresh_replies:
            found = await self._reconcile(request, to, body)
            if found is not None:
                await self._record(
                    ctx,
                    ReplySent(
                        reply_id=request.reply_id,
                        part=step.part,
                        message_sid=found.sid,
                        status=found.status,
                        sent_at=self._now(),
                        reconciled=True,
                    ),
                )
                return True
        started = self._now()
        try:
            if request.template is not None:
                sent = await sender.send_template(
                    to, request.template.content_sid, request.template.variables
                )
            else:
                assert body is not None
                sent = await sender.send_text(to, body)
        except TwilioRejected as exc:
            failed = ReplyFailed(
                reply_id=request.reply_id,
                part=step.part,
                error_code=exc.code,
                http_status=exc.status,
                detail=str(exc),
                failed_at=self._now(),
            )
            refusal = recipient_error(exc.code)
            if refusal is None:
                await self._record(ctx, failed)
                return True
            # The person cannot or will not receive: every part after this one would fail
            # the same way; stop sending to them (the fold withdraws what is pending).
            logger.warning(
                "%s: Twilio %d, %s: no more sends until the person writes",
                self.stream, refusal.code, refusal.meaning,
            )  # fmt: skip
            unreachable = RecipientUnreachable(
                error_code=refusal.code,
                meaning=refusal.meaning,
                at=self._now(),
                reply_id=request.reply_id,
                detail=str(exc),
            )
            await self._record(ctx, failed, unreachable)
            return True
        except (EmptyMessage, MessageTooLong, InvalidPhone, ValueError) as exc:
            # Refused before any request (empty or oversized part, a phone Twilio cannot
            # address, a malformed template sid in the settings): final, nothing was sent.
            await self._record(
                ctx,
                ReplyFailed(request.reply_id, step.part, None, None, str(exc), self._now()),
            )
            return True
        except TwilioUnavailable as exc:
            delay = self.deps.settings.reply_retry_delay
            # The part may have reached Twilio before the connection failed: look it up
            # before sending again.
            self._fresh_replies.discard(request.reply_id)
            await self._record(
                ctx, ReplyDelayed(request.reply_id, step.part, str(exc), delay, self._now())
            )
            ctx.set_timer("retry-outbox", delay, Wake())
            return False
        await self._record(
            ctx,
            ReplySent(
                reply_id=request.reply_id,
                part=step.part,
                message_sid=sent.sid,
                status=sent.status,
                sent_at=self._now(),
                send_started_at=started,
            ),
        )
        return True

    async def _withdraw(self, step: WithdrawReply, ctx: ActorContext[Wake]) -> None:
        """Record that a reply's unsent parts will not go. A part this activation did not
        request may have reached Twilio before a crash: it is looked up first, and recorded
        as sent if Twilio has it (a withdrawal cannot take back what was sent)."""
        pending = step.pending
        request = pending.request
        to = request.to or self.phone
        unsent = [
            part
            for part in range(pending.part_count)
            if part not in pending.sent and part not in pending.failed
        ]
        events: list[Any] = []
        withdrawn: list[int] = []
        for part in unsent:
            if request.reply_id not in self._fresh_replies:
                body = None if request.template is not None else request.parts[part]
                found = await self._reconcile(request, to, body)
                if found is not None:
                    events.append(
                        ReplySent(request.reply_id, part, found.sid, found.status,
                                  self._now(), reconciled=True)
                    )  # fmt: skip
                    continue
            withdrawn.append(part)
        if withdrawn:
            events.append(
                ReplyWithdrawn(request.reply_id, tuple(withdrawn), step.reason, self._now())
            )
        logger.info(
            "%s: %s reply %s withdrawn (%s)", self.stream, request.kind, request.reply_id,
            step.reason,
        )  # fmt: skip
        await self._record(ctx, *events)

    async def _reconcile(self, request: ReplyRequested, to: str, body: str | None) -> Any:
        """A message Twilio already has for this intent, not yet recorded; else None."""
        since = request.requested_at - RECONCILE_SKEW
        content_sid = request.template.content_sid if request.template is not None else None
        try:
            candidates = await self.deps.sender.find_sent(
                to, since, body=body, content_sid=content_sid
            )
        except TwilioUnavailable:
            raise  # crash: the supervisor retries later; sending blind could duplicate
        for candidate in candidates:
            if candidate.sid not in self.state.sent_sids:
                return candidate
        return None

    async def _take_turn(self, step: AskAgent, ctx: ActorContext[Wake]) -> None:
        """One exchange with the agent, ending in a reply request (answer or fallback)."""
        turn_id = step.turn_id or uuid.uuid4().hex
        session: AgentSession | None = None
        failure: tuple[FallbackReason, str] | None = None
        try:
            session = await self._ensure_session(ctx)
        except AgentSessionError as exc:
            failure = (_reason(exc), str(exc))
        asked = AgentAsked(
            turn_id=turn_id,
            message_sids=step.message_sids,
            text=step.text,
            asked_at=self._now(),
            agent_conversation_id=session.conversation_id if session else None,
        )
        # A new turn's AgentAsked is recorded with its outcome when the agent answers
        # within ``ask_record_delay``, on its own (overlapping the agent's thinking) when it
        # does not. A resumed turn (``step.turn_id``) is already in the log.
        unrecorded: list[Any] = [asked] if step.turn_id is None else []
        if session is not None:
            outcome: list[AgentAnswer | AgentSessionError] = []
            answered = trio.Event()

            async def ask(agent: AgentSession) -> None:
                try:
                    outcome.append(await agent.ask(step.text))
                except AgentSessionError as exc:
                    outcome.append(exc)
                answered.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, session)
                if unrecorded:
                    with trio.move_on_after(self.deps.settings.ask_record_delay):
                        await answered.wait()
                    if not answered.is_set():
                        await self._record(ctx, *unrecorded)
                        unrecorded = []
            [answer] = outcome
            if isinstance(answer, AgentSessionError):
                failure = (_reason(answer), str(answer))
                if unrecorded:
                    # The turn comes before the session's close in the log.
                    await self._record(ctx, *unrecorded)
                    unrecorded = []
                await self._drop_session(ctx, answer)
            elif (handoff := self._handoff_call(answer)) is not None:
                await self._record_handoff(ctx, step, turn_id, answer, handoff, unrecorded)
                return
            elif answer.text.strip():
                await self._request_reply(
                    ctx,
                    kind="agent",
                    text=answer.text,
                    in_reply_to=step.message_sids,
                    turn_id=turn_id,
                    before=[
                        *unrecorded,
                        AgentAnswered(
                            turn_id=turn_id,
                            text=answer.text,
                            agent_seconds=answer.agent_seconds,
                            answered_at=self._now(),
                            streamed_parts=answer.streamed_parts,
                            corrected=answer.corrected,
                        ),
                    ],
                )
                return
            else:
                failure = ("empty", "the agent answered with no text")
        assert failure is not None
        reason, detail = failure
        logger.warning("%s: turn %s falls back (%s): %s", self.stream, turn_id, reason, detail)
        await self._request_reply(
            ctx,
            kind="fallback",
            text=self.deps.settings.fallback_text,
            in_reply_to=step.message_sids,
            turn_id=turn_id,
            before=[*unrecorded, AgentTurnFailed(turn_id, reason, detail, self._now())],
        )

    def _handoff_call(self, answer: AgentAnswer) -> ClientToolCall | None:
        tool = self.deps.settings.handoff_tool
        return next((call for call in answer.tool_calls if call.tool_name == tool), None)

    async def _record_handoff(
        self,
        ctx: ActorContext[Wake],
        step: AskAgent,
        turn_id: str,
        answer: AgentAnswer,
        call: ClientToolCall,
        unrecorded: Sequence[Any],
    ) -> None:
        """The agent asked for a person: its own words, if it said any, answer the turn
        (once); else the hand-off notice does. Then the conversation waits for a person."""
        now = self._now()
        asked = HumanRequested(
            by="agent",
            reason=_handoff_reason(call),
            at=now,
            turn_id=turn_id,
            tool_call_id=call.tool_call_id,
        )
        said = answer.text.strip()
        answered = AgentAnswered(
            turn_id=turn_id,
            text=answer.text if said else "",
            agent_seconds=answer.agent_seconds,
            answered_at=now,
            streamed_parts=answer.streamed_parts,
            corrected=answer.corrected,
        )
        logger.info("%s: the agent asked for a person (%s)", self.stream, asked.reason)
        if said:
            await self._request_reply(
                ctx,
                kind="agent",
                text=answer.text,
                in_reply_to=step.message_sids,
                turn_id=turn_id,
                before=[*unrecorded, answered],
                after=[asked],
            )
            return
        await self._request_reply(
            ctx,
            kind="handoff_notice",
            text=self.deps.settings.handoff_notice_text,
            in_reply_to=step.message_sids,
            turn_id=turn_id,
            before=[*unrecorded, answered, asked],
        )

    def _tool_call_between_turns(self, ctx: ActorContext[Wake], call: ClientToolCall) -> None:
        """From the session's task: the agent called its hand-off tool after its answer
        had ended the turn (words first, unstreamed). Recorded on the next wake."""
        if call.tool_name == self.deps.settings.handoff_tool:
            self._late_handoffs.append(call)
            ctx.set_timer("late-tool-call", 0, Wake())

    async def _record_late_handoffs(self, ctx: ActorContext[Wake]) -> None:
        calls, self._late_handoffs = self._late_handoffs, []
        if self.state.control != "bot" or not may_speak(self.state, "agent"):
            return  # a person has it already, or nobody may speak to the person
        call = calls[0]
        logger.info("%s: the agent asked for a person after its answer", self.stream)
        await self._record(
            ctx,
            HumanRequested(
                by="agent",
                reason=_handoff_reason(call),
                at=self._now(),
                tool_call_id=call.tool_call_id,
            ),
        )

    async def _close_session(self, ctx: ActorContext[Wake], reason: str) -> None:
        """Close the agent session on purpose (not on an error), and record it."""
        session, self.session = self.session, None
        if session is None:
            return
        if not session.closed:
            with trio.move_on_after(2):
                await session.aclose()
        await self._record(
            ctx,
            SessionClosedEvent(
                agent_conversation_id=session.conversation_id,
                code=1000,
                reason=reason,
                likely_cause=None,
                closed_at=self._now(),
            ),
        )

    async def _open_session_ahead(self, ctx: ActorContext[Wake]) -> None:
        """Open and prime the agent session right after the first message is sent.

        Opening takes a WebSocket handshake, the agent's first message and the priming
        update; done now, while the person reads, it is off the path of their first reply.
        A failure here is not a failed turn: the next message opens the session again.
        """
        self._prewarm = False
        try:
            await self._ensure_session(ctx)
        except AgentSessionError as exc:
            logger.info(
                "%s: agent session not opened ahead (%s); next turn retries", self.stream, exc
            )

    async def _ensure_session(self, ctx: ActorContext[Wake]) -> AgentSession:
        if self.session is not None and not self.session.closed:
            return self.session
        if self.session is not None:
            error = self.session.close_error
            await self._drop_session(ctx, error)
        settings = self.deps.settings
        call = self.state.call
        config = AgentSessionConfig(
            base_url=settings.elevenlabs_base_url,
            agent_id=call.agent_id if call is not None else settings.default_agent_id,
            api_key=settings.elevenlabs_api_key,
            user_id=self.phone,
            dynamic_variables=dict(call.dynamic_variables) if call is not None else {},
            turn_timeout=settings.turn_timeout,
            first_message_wait=settings.first_message_wait,
            client_tools={settings.handoff_tool: HANDOFF_TOOL_RESULT}
            if settings.handoff_tool
            else {},
            on_tool_call_between_turns=lambda call: self._tool_call_between_turns(ctx, call),
        )
        session = await AgentSession.open(ctx.nursery, self.deps.http, config)
        reopened = self.state.sessions_opened > 0
        try:
            await session.send_context(compose_context(self.state))
        except AgentSessionError:
            await session.aclose()
            raise
        self.session = session
        await self._record(
            ctx,
            AgentSessionOpened(
                agent_conversation_id=session.conversation_id,
                agent_id=config.agent_id,
                reopened=reopened,
                primed_turns=len(self.state.history),
                opened_at=self._now(),
            ),
        )
        return session

    async def _drop_session(self, ctx: ActorContext[Wake], error: AgentSessionError | None) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        with trio.move_on_after(2):
            await session.aclose()
        code = error.code if error is not None else None
        reason = getattr(error, "close_reason", None) or (error.reason if error else "closed")
        likely = error.reason if isinstance(error, AgentSessionClosed) else None
        await self._record(
            ctx,
            SessionClosedEvent(
                agent_conversation_id=session.conversation_id,
                code=code,
                reason=reason or "closed",
                likely_cause=likely,
                closed_at=self._now(),
            ),
        )


def _handoff_reason(call: ClientToolCall) -> str:
    """Why the agent asked for a person: its tool call's ``reason`` parameter, if it gave
    one (the tool's parameters are the agent configuration's to define)."""
    reason = call.parameters.get("reason")
    if isinstance(reason, str) and reason.strip():
        return reason.strip()[:500]
    return "the agent asked for a person"


def _reason(error: AgentSessionError) -> FallbackReason:
    if isinstance(error, AgentTurnTimeout):
        return "timeout"
    if isinstance(error, AgentSessionClosed):
        return "session_closed"
    if isinstance(error, AgentUnavailable):
        return "unavailable"
    return "protocol"


def phone_actor_factory(deps: PhoneDependencies) -> Callable[[str], PhoneActor]:
    """The runtime's factory: the actor id is the phone (E.164)."""

    def make(phone: str) -> PhoneActor:
        return PhoneActor(phone, deps)

    return make


async def resume_unfinished(
    store: EventStore,
    phones: ActorSystem[Wake],
    rules: Rules = DEFAULT_RULES,
    auto_return_after: float | None = None,
) -> int:
    """Wake every phone whose log shows work in hand (after a crash or a restart).

    Folds the ``phone`` category once at start-up. What was appended before the stop is
    the state; an actor woken here finds its pending step and finishes it. A conversation
    that goes back to the bot on its own after a while is woken too, to arm that timer.
    """
    states: dict[str, ConversationState] = {}
    position = 0
    while True:
        batch = await store.read_all(after=position, limit=5000, category="phone")
        if not batch:
            break
        for record in batch:
            phone = record.stream.split("-", 1)[1]
            state = states.setdefault(phone, ConversationState(phone))
            try:
                apply(state, decode(record))
            except UnknownEventType:
                continue
        position = batch[-1].position
    woken = 0
    for phone, state in states.items():
        if (
            next_step(state, rules) is not None
            or auto_return_at(state, auto_return_after) is not None
        ):
            await phones.tell(phone, Wake())
            woken += 1
    if woken:
        logger.info("resumed %d conversations with work in hand", woken)
    return woken
