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
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Any

import attrs

from events.calls import CallCompleted, CallFailed, DynamicValue, TranscriptLine
from events.conversation import (
    AgentAnswered,
    AgentAsked,
    AgentSessionClosed,
    AgentSessionOpened,
    AgentTurnFailed,
    MessageReceived,
    ReplyFailed,
    ReplyRequested,
    ReplySent,
    Template,
)

#: WhatsApp's customer-service window: free-form text only this long after the last inbound.
SERVICE_WINDOW = timedelta(hours=24)
#: How much of the conversation is kept for priming a reopened agent session.
HISTORY_TURNS = 20
TRANSCRIPT_TAIL = 12
MAX_CONTEXT_CHARS = 6000


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
        case AgentAsked():
            asked = set(event.message_sids)
            state._asked_sids |= asked
            state.unanswered = [m for m in state.unanswered if m.message_sid not in asked]
            state.open_turn = event
            state.history.append(Exchange("user", event.text))
        case AgentAnswered():
            if state.open_turn is not None and state.open_turn.turn_id == event.turn_id:
                state.open_turn = None
            state.turns += 1
            state.history.append(Exchange("agent", event.text))
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
            state.outbox.append(PendingReply(event))
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


Step = DeliverReply | SendFirstMessage | SendMissedCallMessage | AskAgent | NoticeMedia


def next_step(state: ConversationState) -> Step | None:
    """The one thing to do next, or ``None`` when the conversation waits for the person."""
    for pending in state.outbox:
        part = pending.next_part()
        if part is not None:
            return DeliverReply(pending, part)
    if state.open_turn is not None:
        # asked before a crash, never answered: ask again with the same turn
        turn = state.open_turn
        return AskAgent(turn.message_sids, turn.text, turn_id=turn.turn_id)
    if state.call is not None and state.call.conversation_id not in state.first_message_requested:
        return SendFirstMessage(state.call)
    missed = state.missed_call
    if missed is not None and missed.conversation_id not in state.first_message_requested:
        return SendMissedCallMessage(missed)
    if state.unanswered:
        media_only = tuple(m for m in state.unanswered if not m.body.strip())
        if media_only and len(media_only) == len(state.unanswered):
            return NoticeMedia(media_only)
        messages = tuple(state.unanswered)
        return AskAgent(tuple(m.message_sid for m in messages), turn_text(messages))
    return None


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


def first_message_text(call: CallContext, text_format: str) -> str:
    """The free-text first message, from a format with ``{name}`` and ``{summary}``."""
    name = customer_name(call) or "there"
    return text_format.format(name=name, summary=call.summary.strip()).strip()


def first_message_template(call: CallContext, content_sid: str) -> Template:
    """The approved template for a business-initiated first message.

    Variables: ``1`` the person's name, ``2`` the call summary (Twilio limits a variable's
    length, so the summary is cut at a sentence near 900 characters).
    """
    return Template(
        content_sid=content_sid,
        variables={"1": customer_name(call) or "there", "2": _cut(call.summary.strip(), 900)},
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
