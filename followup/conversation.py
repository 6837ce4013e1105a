"""The rules of a WhatsApp follow-up conversation, as plain functions over values.

The phone actor folds its stream into a ``ConversationState`` with ``apply`` and asks
``next_step`` what to do; it performs the step (I/O), records the outcome, and asks again.
Nothing here touches a socket or a clock: every rule is tested on values, and a state
rebuilt from the log after a crash leads to exactly the step that was interrupted.

Decisions worth knowing:
- Replies are finished before anything else, in the order they were requested: an
  intent in the outbox (``ReplyRequested`` without an outcome for every part) is the first
  thing an actor resumes after a restart, so nothing is sent twice or left unsent.
- Messages that arrive while a turn is in flight are not lost: they wait in ``unanswered``
  and are coalesced into the next turn (joined with new lines, in order), answered by one
  reply that lists every MessageSid it answers. One reply per burst reads like a person.
- A turn that was asked but has no outcome in the log (crash mid-turn) is asked again with
  the same turn id: nothing was sent to the person yet, so asking again is safe.
- A message with media and no text gets a polite notice instead of an agent turn.

Who may speak (``Rules``, ``may_speak``):
- A message that is only an opt-out keyword (case, accents and punctuation aside) opts the
  person out before anything else happens: one confirmation, then nothing, not even replies
  already in the outbox (they are withdrawn), until an opt-in keyword. Messages written
  while opted out stay unanswered.
- Twilio saying the person cannot or will not receive (``RecipientUnreachable``) stops
  every send until the person writes again: a message from them proves they can receive.
- While a person at the business has the conversation (taken over, or asked for by the
  agent's hand-off tool or the person's hand-off keyword) the bot never speaks: inbound
  messages are kept for that person, not asked of the agent, and no fallback is sent.
- A reply is never refused when it is requested: the log decides. A reply requested after a
  take-over, an opt-out or an unreachable recipient (the actor folded an older state when it
  decided) is marked for withdrawal as it is folded, and ``next_step`` withdraws it before
  anything is sent. So the phone actor's expected-version appends need no special path for
  a fact that lands while it decides: whichever order the log has, the fold says what goes
  out.
"""

from __future__ import annotations

import unicodedata
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

import attrs

from events.calls import CallCompleted, CallFailed, DynamicValue, TranscriptLine
from events.conversation import (
    AgentAnswered,
    AgentAsked,
    AgentReplySuppressed,
    AgentSessionClosed,
    AgentSessionOpened,
    AgentTurnFailed,
    FirstMessageSkipped,
    HandedBack,
    HumanRequested,
    HumanTookOver,
    MessageReceived,
    OperatorMessageRequested,
    OptedIn,
    OptedOut,
    RecipientUnreachable,
    ReplyFailed,
    ReplyKind,
    ReplyRequested,
    ReplySent,
    ReplyWithdrawn,
    SilenceReason,
    Template,
)

#: WhatsApp's customer-service window: free-form text only this long after the last inbound.
SERVICE_WINDOW = timedelta(hours=24)
#: How much of the conversation is kept for priming a reopened agent session.
HISTORY_TURNS = 20
TRANSCRIPT_TAIL = 12
MAX_CONTEXT_CHARS = 6000

#: Who has the conversation: the bot, nobody yet (a person was asked for), or a person.
Control = Literal["bot", "waiting_for_human", "human"]

#: The issue's lists (English, then Spanish); both are on whatever the language, because a
#: Spanish speaker may well write STOP. ``AFTERCALL_OPTOUT_KEYWORDS`` replaces them.
DEFAULT_OPTOUT_KEYWORDS = (
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
    "BAJA", "PARAR", "DETENER", "CANCELAR", "DESUSCRIBIR",
)  # fmt: skip
#: ``AFTERCALL_OPTIN_KEYWORDS`` replaces them.
DEFAULT_OPTIN_KEYWORDS = ("START", "ALTA", "SUSCRIBIR")
#: Bot replies: the ones a person at the business silences.
BOT_KINDS: frozenset[str] = frozenset({"first_message", "agent", "fallback", "media_notice"})


def keyword_form(text: str) -> str:
    """A message as keywords are compared: case, accents, punctuation and spaces aside
    ("¡Baja!" -> "baja", "Opt-out" -> "optout", "stop all" -> "stopall")."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(c for c in bare.casefold() if c.isalnum())


def _keyword_set(words: Iterable[str]) -> frozenset[str]:
    if isinstance(words, str):
        raise TypeError("keywords must be a collection of strings, not one string")
    return frozenset(form for form in (keyword_form(word) for word in words) if form)


@attrs.frozen
class Rules:
    """What the deployment decides about who may speak (``aftercall.settings``).

    Keywords are kept in ``keyword_form``; a message matches when it is nothing but one of
    them. ``handoff_keywords`` is empty by default: asking for a person in words is off.
    """

    optout_keywords: frozenset[str] = attrs.field(
        default=DEFAULT_OPTOUT_KEYWORDS, converter=_keyword_set
    )
    optin_keywords: frozenset[str] = attrs.field(
        default=DEFAULT_OPTIN_KEYWORDS, converter=_keyword_set
    )
    handoff_keywords: frozenset[str] = attrs.field(default=(), converter=_keyword_set)


DEFAULT_RULES = Rules()


def keyword_of(message: MessageReceived, keywords: frozenset[str]) -> str | None:
    """The keyword a message is (in ``keyword_form``), or ``None``."""
    form = keyword_form(message.body)
    return form if form and form in keywords else None


@attrs.frozen
class CallContext:
    """What the agent knew at the end of the phone call."""

    conversation_id: str
    agent_id: str
    summary: str
    transcript: tuple[TranscriptLine, ...]
    dynamic_variables: dict[str, DynamicValue]
    customer_name: str | None


@attrs.frozen
class Exchange:
    """One line of the WhatsApp conversation, for priming a new agent session."""

    role: str  # "user" or "agent"
    text: str


@attrs.define
class PendingReply:
    """A reply in the outbox: its intent and which parts have an outcome."""

    request: ReplyRequested
    sent: dict[int, str] = attrs.field(factory=dict)  # part -> MessageSid
    failed: set[int] = attrs.field(factory=set)
    #: Set when the fold finds the reply may no longer be sent: its unsent parts are
    #: withdrawn (``ReplyWithdrawn``) before anything else goes out.
    withdraw: SilenceReason | None = None

    @property
    def part_count(self) -> int:
        return 1 if self.request.template is not None else len(self.request.parts)

    def next_part(self) -> int | None:
        for part in range(self.part_count):
            if part not in self.sent and part not in self.failed:
                return part
        return None


@attrs.define
class ConversationState:
    """Everything the phone actor needs to decide its next step, folded from its stream."""

    phone: str
    version: int = 0
    call: CallContext | None = None
    calls_failed: int = 0
    missed_call: CallFailed | None = None  # the latest failed call to follow up, if any
    first_message_requested: set[str] = attrs.field(factory=set)  # call conversation ids
    last_inbound_at: datetime | None = None
    unanswered: list[MessageReceived] = attrs.field(factory=list)
    open_turn: AgentAsked | None = None
    outbox: list[PendingReply] = attrs.field(factory=list)
    history: deque[Exchange] = attrs.field(factory=lambda: deque(maxlen=HISTORY_TURNS))
    agent_conversation_id: str | None = None
    sessions_opened: int = 0
    turns: int = 0
    sent_sids: set[str] = attrs.field(factory=set)
    #: The number the person last wrote from, when it is not ``phone`` itself.
    reply_address: str | None = None
    #: Who may speak, and since when (``HumanRequested``, ``HumanTookOver``, ``HandedBack``).
    control: Control = "bot"
    #: The operator who took it over, or who asked for a person ("agent", "customer").
    control_by: str | None = None
    control_reason: str | None = None
    control_since: datetime | None = None
    #: The last time a person at the business acted (took over, wrote): the auto-return's
    #: clock starts there.
    last_human_at: datetime | None = None
    opted_out: OptedOut | None = None
    unreachable: RecipientUnreachable | None = None
    #: Operator messages not yet turned into a reply, oldest first.
    operator_requests: list[OperatorMessageRequested] = attrs.field(factory=list)
    _operator_requested: set[str] = attrs.field(factory=set)
    #: Inbound messages already in ``history`` (shown to a person at the business).
    _history_sids: set[str] = attrs.field(factory=set)
    _asked_sids: set[str] = attrs.field(factory=set)


def apply(state: ConversationState, event: Any) -> None:
    """Fold one event of the phone's stream into the state (mutates ``state``)."""
    match event:
        case CallCompleted():
            state.call = CallContext(
                conversation_id=event.conversation_id,
                agent_id=event.agent_id,
                summary=event.summary,
                transcript=event.transcript,
                dynamic_variables=dict(event.dynamic_variables),
                customer_name=event.customer_name,
            )
        case CallFailed():
            state.calls_failed += 1
            if event.follow_up:
                state.missed_call = event
        case MessageReceived():
            state.unanswered.append(event)
            state.reply_address = event.address
            if state.last_inbound_at is None or event.received_at > state.last_inbound_at:
                state.last_inbound_at = event.received_at
            # They wrote: whatever Twilio said before, they can receive now.
            state.unreachable = None
            if state.control != "bot":
                _show(state, [event])  # a person at the business reads it, not the agent
        case AgentAsked():
            asked = set(event.message_sids)
            state._asked_sids |= asked
            state.unanswered = [m for m in state.unanswered if m.message_sid not in asked]
            state.open_turn = event
            if not asked <= state._history_sids:
                state.history.append(Exchange("user", event.text))
                state._history_sids |= asked
        case AgentAnswered():
            if state.open_turn is not None and state.open_turn.turn_id == event.turn_id:
                state.open_turn = None
            state.turns += 1
            if event.text.strip():
                state.history.append(Exchange("agent", event.text))
        case AgentReplySuppressed():
            if state.open_turn is not None and state.open_turn.turn_id == event.turn_id:
                state.open_turn = None
            state.turns += 1
        case AgentTurnFailed():
            if state.open_turn is not None and state.open_turn.turn_id == event.turn_id:
                state.open_turn = None
            state.turns += 1
        case AgentSessionOpened():
            state.agent_conversation_id = event.agent_conversation_id
            state.sessions_opened += 1
        case AgentSessionClosed():
            if state.agent_conversation_id == event.agent_conversation_id:
                state.agent_conversation_id = None
        case ReplyRequested():
            if event.kind == "first_message" and event.call_conversation_id:
                state.first_message_requested.add(event.call_conversation_id)
            answered = set(event.in_reply_to)
            if answered:
                # media notices answer messages without an agent turn
                state.unanswered = [m for m in state.unanswered if m.message_sid not in answered]
            # Decided on an older state than the log's (a take-over or an opt-out landed
            # while the actor decided): it stays in the log as requested, and is withdrawn.
            requested = PendingReply(event, withdraw=silence_reason(state, event.kind))
            state.outbox.append(requested)
            if event.kind == "operator":
                if event.operator_request_id is not None:
                    state._operator_requested.add(event.operator_request_id)
                    state.operator_requests = [
                        r for r in state.operator_requests
                        if r.request_id != event.operator_request_id
                    ]  # fmt: skip
                if requested.withdraw is None:
                    state.history.append(Exchange(_operator_role(event.operator), _said(event)))
        case ReplyWithdrawn():
            withdrawn = _pending(state, event.reply_id)
            if withdrawn is not None:
                withdrawn.failed |= set(event.parts)
                _drop_if_done(state, withdrawn)
        case OptedOut():
            state.opted_out = event
            _consume(state, (*event.dropped, event.message_sid))
            _withdraw_what_may_not_go(state)
        case OptedIn():
            state.opted_out = None
            _consume(state, (*event.dropped, event.message_sid))
        case RecipientUnreachable():
            state.unreachable = event
            _withdraw_what_may_not_go(state)
        case HumanRequested():
            _hand_over(state, "waiting_for_human", event.by, event.reason, event.at)
        case HumanTookOver():
            _hand_over(state, "human", event.operator, event.reason, event.at)
            # The agent's replies not sent yet would speak over the person who took over;
            # waiting for a person (above) keeps them: the agent's last words go out.
            _withdraw_what_may_not_go(state)
        case HandedBack():
            if event.operator is not None:
                # What the person wrote meanwhile was for the person at the business, who
                # has read it; the agent answers what comes next, knowing all of it.
                state.unanswered = []
            state.control = "bot"
            state.control_by = state.control_reason = None
            state.control_since = state.last_human_at = None
        case OperatorMessageRequested():
            if event.request_id not in state._operator_requested and all(
                r.request_id != event.request_id for r in state.operator_requests
            ):
                state.operator_requests.append(event)
            state.last_human_at = event.at
        case FirstMessageSkipped():
            state.first_message_requested.add(event.call_conversation_id)
        case ReplySent():
            state.sent_sids.add(event.message_sid)
            pending = _pending(state, event.reply_id)
            if pending is not None:
                pending.sent[event.part] = event.message_sid
                _drop_if_done(state, pending)
        case ReplyFailed():
            pending = _pending(state, event.reply_id)
            if pending is not None:
                pending.failed.add(event.part)
                _drop_if_done(state, pending)
        case _:
            pass  # events of other concerns (supervision, ...) do not change the conversation


def _pending(state: ConversationState, reply_id: str) -> PendingReply | None:
    for pending in state.outbox:
        if pending.request.reply_id == reply_id:
            return pending
    return None


def _drop_if_done(state: ConversationState, pending: PendingReply) -> None:
    if pending.next_part() is None:
        state.outbox.remove(pending)


def _show(state: ConversationState, messages: Iterable[MessageReceived]) -> None:
    """Put inbound messages in the history as a person at the business reads them."""
    for message in messages:
        if message.message_sid in state._history_sids:
            continue
        state._history_sids.add(message.message_sid)
        text = turn_text((message,))
        if text:
            state.history.append(Exchange("user", text))


def _consume(state: ConversationState, sids: Iterable[str]) -> None:
    gone = set(sids)
    state.unanswered = [m for m in state.unanswered if m.message_sid not in gone]


def _hand_over(
    state: ConversationState, control: Control, by: str, reason: str | None, at: datetime
) -> None:
    state.control = control
    state.control_by = by
    state.control_reason = reason
    state.control_since = at
    state.last_human_at = at
    _show(state, state.unanswered)


def _withdraw_what_may_not_go(state: ConversationState) -> None:
    for pending in state.outbox:
        if pending.withdraw is None:
            pending.withdraw = silence_reason(state, pending.request.kind)


def _operator_role(operator: str | None) -> str:
    return f"human operator {operator}" if operator else "human operator"


def _said(request: ReplyRequested) -> str:
    if request.parts:
        return "\n".join(request.parts)
    # What the agent is told a template said: its words are Meta's, its variables ours.
    variables = request.template.variables if request.template is not None else {}
    filled = "; ".join(v for _, v in sorted(variables.items()) if v)
    return f"[an approved template: {filled}]" if filled else "[an approved template]"


# -- who may speak ------------------------------------------------------------------------


def silence_reason(state: ConversationState, kind: ReplyKind | str) -> SilenceReason | None:
    """Why a reply of ``kind`` may not be sent now, or ``None`` when it may.

    Nothing goes to a person Twilio says cannot receive; an opted-out person gets only the
    confirmation of their opt-out; while a person at the business has the conversation (or
    is being waited for) the bot's own replies stay unsent, while what that person writes,
    the notices about the hand-off and the opt-in/out confirmations go.
    """
    if state.unreachable is not None:
        return "unreachable"
    if state.opted_out is not None:
        return None if kind == "optout_confirmation" else "opted_out"
    if kind in BOT_KINDS and state.control != "bot":
        return "human"
    return None


def may_speak(state: ConversationState, kind: ReplyKind | str = "agent") -> bool:
    return silence_reason(state, kind) is None


def skip_reason(state: ConversationState) -> str | None:
    """Why no first message goes out after a call now, in the words the log, the post-call
    webhook and the batch monitor use ("skipped: opted out"), or ``None``."""
    match silence_reason(state, "first_message"):
        case "opted_out":
            return "skipped: opted out"
        case "unreachable":
            assert state.unreachable is not None
            return f"skipped: cannot receive (Twilio {state.unreachable.error_code})"
        case "human":
            return "skipped: a person at the business has the conversation"
    return None


class Refused(ValueError):
    """An operator's command that cannot be carried out; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_take_over(state: ConversationState, operator: str) -> None:
    """A person at the business may take over any conversation that has begun, unless
    another person has it already (taking over one's own is a no-op for the caller)."""
    if state.version == 0:
        raise Refused(404, f"no conversation with {state.phone}")
    if state.control == "human" and state.control_by != operator:
        raise Refused(409, f"{state.control_by} has had this conversation since {_when(state)}")


def check_hand_back(state: ConversationState) -> None:
    if state.version == 0:
        raise Refused(404, f"no conversation with {state.phone}")
    if state.control == "bot":
        raise Refused(409, "the bot has this conversation already: nothing to hand back")


def check_operator_message(state: ConversationState, now: datetime) -> None:
    """Whether an operator's free text can go to the person now (``Refused`` if not)."""
    check_operator_template(state)
    if not in_service_window(state, now):
        last = state.last_inbound_at.isoformat() if state.last_inbound_at else "never"
        raise Refused(
            422,
            "outside WhatsApp's 24-hour customer-service window (last message from the "
            f"person: {last}): free text cannot be delivered; send the approved template "
            '(API: {"template": true}; the console offers it)',
        )


def check_operator_template(state: ConversationState) -> None:
    """Whether anything from an operator may go to the person (``Refused`` if not): an
    approved template may, outside the 24-hour window too."""
    if state.version == 0:
        raise Refused(404, f"no conversation with {state.phone}")
    if state.opted_out is not None:
        raise Refused(
            409,
            f"{state.phone} opted out (wrote {state.opted_out.keyword.upper()!r} at "
            f"{state.opted_out.at.isoformat()}): nothing is sent until they opt in again",
        )
    if state.unreachable is not None:
        raise Refused(
            409,
            f"Twilio says {state.phone} cannot receive (error "
            f"{state.unreachable.error_code}: {state.unreachable.meaning}); nothing is sent "
            "until they write again",
        )


def operator_request_known(state: ConversationState, request_id: str) -> bool:
    """Whether an operator's message is in the log already (a retried request)."""
    return request_id in state._operator_requested or any(
        r.request_id == request_id for r in state.operator_requests
    )


def _when(state: ConversationState) -> str:
    return state.control_since.isoformat() if state.control_since else "earlier"


def auto_return_at(state: ConversationState, after: float | None) -> datetime | None:
    """When a conversation waiting for, or held by, a person goes back to the bot on its
    own: ``after`` seconds from the last thing a person at the business did (``None``: never,
    the default)."""
    if after is None or state.control == "bot":
        return None
    since = state.last_human_at or state.control_since
    return None if since is None else since + timedelta(seconds=after)


# -- steps -------------------------------------------------------------------------------


@attrs.frozen
class DeliverReply:
    """Send the next part of the oldest reply in the outbox."""

    pending: PendingReply
    part: int


@attrs.frozen
class SendFirstMessage:
    """Open the WhatsApp conversation after a completed call."""

    call: CallContext


@attrs.frozen
class SendMissedCallMessage:
    """Tell the person we tried to call (only when the deployment asks for it)."""

    call: CallFailed


@attrs.frozen
class AskAgent:
    """Send these messages to the agent as one turn (``turn_id`` set when resuming one)."""

    message_sids: tuple[str, ...]
    text: str
    turn_id: str | None = None


@attrs.frozen
class NoticeMedia:
    """Tell the person politely that only text is understood."""

    messages: tuple[MessageReceived, ...]


@attrs.frozen
class OptOut:
    """Record the opt-out and confirm it once (``dropped``: unanswered before it)."""

    message: MessageReceived
    keyword: str
    dropped: tuple[str, ...]


@attrs.frozen
class OptIn:
    """Record the opt-in and confirm it (``dropped``: written while opted out)."""

    message: MessageReceived
    keyword: str
    dropped: tuple[str, ...]


@attrs.frozen
class WithdrawReply:
    """Record that the unsent parts of a reply will not be sent."""

    pending: PendingReply
    reason: SilenceReason


@attrs.frozen
class SendOperatorMessage:
    """Turn an operator's message into a reply in the outbox."""

    request: OperatorMessageRequested


@attrs.frozen
class SuppressTurn:
    """End a turn asked before a crash without asking again: nobody would hear the answer."""

    turn: AgentAsked
    reason: SilenceReason


@attrs.frozen
class SkipFirstMessage:
    """Record why no first message goes out after this call."""

    call_conversation_id: str
    reason: str


@attrs.frozen
class RequestHuman:
    """The person asked for a person in words: wait for one, and tell them so."""

    message: MessageReceived
    keyword: str
    answered: tuple[str, ...]


Step = (
    DeliverReply
    | SendFirstMessage
    | SendMissedCallMessage
    | AskAgent
    | NoticeMedia
    | OptOut
    | OptIn
    | WithdrawReply
    | SendOperatorMessage
    | SuppressTurn
    | SkipFirstMessage
    | RequestHuman
)


def next_step(state: ConversationState, rules: Rules = DEFAULT_RULES) -> Step | None:
    """The one thing to do next, or ``None`` when the conversation waits for the person
    (or for a person at the business)."""
    keyword_step = _opt_step(state, rules)
    if keyword_step is not None:
        return keyword_step
    for pending in state.outbox:
        if pending.withdraw is not None and pending.next_part() is not None:
            return WithdrawReply(pending, pending.withdraw)
    for pending in state.outbox:
        part = pending.next_part()
        if part is not None:
            return DeliverReply(pending, part)
    if state.operator_requests:
        return SendOperatorMessage(state.operator_requests[0])
    silence = silence_reason(state, "agent")
    if state.open_turn is not None:
        turn = state.open_turn
        if silence is not None:
            return SuppressTurn(turn, silence)
        # asked before a crash, never answered: ask again with the same turn
        return AskAgent(turn.message_sids, turn.text, turn_id=turn.turn_id)
    for call_id, make in _due_first_messages(state):
        skipped = skip_reason(state)
        return SkipFirstMessage(call_id, skipped) if skipped is not None else make
    if not state.unanswered or silence is not None:
        return None  # opted out: until an opt-in; with a person: theirs to answer
    for index, message in enumerate(state.unanswered):
        keyword = keyword_of(message, rules.handoff_keywords)
        if keyword is not None:
            answered = tuple(m.message_sid for m in state.unanswered[: index + 1])
            return RequestHuman(message, keyword, answered)
    media_only = tuple(m for m in state.unanswered if not m.body.strip())
    if media_only and len(media_only) == len(state.unanswered):
        return NoticeMedia(media_only)
    messages = tuple(state.unanswered)
    return AskAgent(tuple(m.message_sid for m in messages), turn_text(messages))


def _opt_step(state: ConversationState, rules: Rules) -> OptOut | OptIn | None:
    """An opt-out keyword comes before everything (replies already in the outbox
    included); while opted out only an opt-in keyword does anything."""
    keywords = rules.optin_keywords if state.opted_out is not None else rules.optout_keywords
    for index, message in enumerate(state.unanswered):
        keyword = keyword_of(message, keywords)
        if keyword is not None:
            dropped = tuple(m.message_sid for m in state.unanswered[:index])
            if state.opted_out is not None:
                return OptIn(message, keyword, dropped)
            return OptOut(message, keyword, dropped)
    return None


def _due_first_messages(
    state: ConversationState,
) -> list[tuple[str, SendFirstMessage | SendMissedCallMessage]]:
    due: list[tuple[str, SendFirstMessage | SendMissedCallMessage]] = []
    if state.call is not None and state.call.conversation_id not in state.first_message_requested:
        due.append((state.call.conversation_id, SendFirstMessage(state.call)))
    missed = state.missed_call
    if missed is not None and missed.conversation_id not in state.first_message_requested:
        due.append((missed.conversation_id, SendMissedCallMessage(missed)))
    return due


def turn_text(messages: tuple[MessageReceived, ...]) -> str:
    """The ``user_message`` for a burst of WhatsApp messages."""
    lines = []
    for message in messages:
        text = message.body.strip()
        if message.media:
            note = (
                f"[the person also sent {len(message.media)} attachment(s) "
                "that cannot be read here]"
            )
            text = f"{text}\n{note}" if text else note
        if text:
            lines.append(text)
    return "\n".join(lines)


def in_service_window(state: ConversationState, now: datetime) -> bool:
    """Free-form text is allowed only within 24 h of the person's last inbound message."""
    return state.last_inbound_at is not None and now - state.last_inbound_at < SERVICE_WINDOW


def customer_name(call: CallContext) -> str | None:
    """The person's name as the call knew it (explicit, or a common dynamic variable)."""
    if call.customer_name:
        return call.customer_name
    for key in ("customer_name", "user_name", "name", "first_name"):
        value = call.dynamic_variables.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def first_message_text(call: CallContext, text_format: str, unnamed: str = "there") -> str:
    """The free-text first message, from a format with ``{name}`` and ``{summary}``;
    ``unnamed`` stands in for a name the call did not know ("Hi there", "Hola de nuevo")."""
    name = customer_name(call) or unnamed
    return text_format.format(name=name, summary=call.summary.strip()).strip()


def first_message_template(call: CallContext, content_sid: str, unnamed: str = "there") -> Template:
    """The approved template for a business-initiated first message.

    Variables: ``1`` the person's name, ``2`` the call summary (Twilio limits a variable's
    length, so the summary is cut at a sentence near 900 characters).
    """
    return Template(
        content_sid=content_sid,
        variables={"1": customer_name(call) or unnamed, "2": _cut(call.summary.strip(), 900)},
    )


def compose_context(state: ConversationState) -> str:
    """What a (re)opened agent session is told, so it answers in context.

    The call summary, the end of the call transcript and the WhatsApp conversation so far,
    most recent last, bounded in size (the agent's context window is not ours to fill).
    """
    sections = ["This conversation continues on WhatsApp after a phone call with this person."]
    call = state.call
    if call is not None:
        if call.summary.strip():
            sections.append(f"Call summary: {call.summary.strip()}")
        tail = call.transcript[-TRANSCRIPT_TAIL:]
        if tail:
            lines = "\n".join(f"{line.role}: {line.message}" for line in tail)
            sections.append(f"End of the call transcript:\n{lines}")
    history = list(state.history)
    if (
        state.open_turn is not None
        and history
        and history[-1] == Exchange("user", state.open_turn.text)
    ):
        history.pop()  # the turn being (re)asked is sent as the user_message itself
    if history:
        lines = "\n".join(f"{x.role}: {x.text}" for x in history)
        sections.append(f"WhatsApp conversation so far:\n{lines}")
        if any(x.role.startswith("human operator") for x in history):
            sections.append(
                "A person from the business (the human operator above) answered part of "
                "this conversation. Continue from there, consistent with what they told "
                "the person."
            )
    text = "\n\n".join(sections)
    if len(text) > MAX_CONTEXT_CHARS:
        text = "…" + text[-MAX_CONTEXT_CHARS:]
    return text


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    stop = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: stop + 1] if stop > limit // 2 else cut.rstrip() + "…"
