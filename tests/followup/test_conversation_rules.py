"""The conversation rules on values: what the phone actor does next, from its log alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events.calls import CallCompleted, TranscriptLine
from events.conversation import (
    AgentAnswered,
    AgentAsked,
    AgentTurnFailed,
    MediaItem,
    MessageReceived,
    ReplyFailed,
    ReplyKind,
    ReplyRequested,
    ReplySent,
    Template,
)
from followup.conversation import (
    AskAgent,
    ConversationState,
    DeliverReply,
    NoticeMedia,
    SendFirstMessage,
    SendMissedCallMessage,
    apply,
    compose_context,
    first_message_template,
    first_message_text,
    in_service_window,
    next_step,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PHONE = "+15551234567"


def call(cid: str = "conv_1", **kw: object) -> CallCompleted:
    return CallCompleted(
        conversation_id=cid,
        agent_id="agent_1",
        phone=PHONE,
        summary="Asked about the invoice for October. Promised a refund of 20 euros.",
        transcript=(TranscriptLine("agent", "Hello Ana"), TranscriptLine("user", "Hi")),
        dynamic_variables={"user_name": "Ana", "plan": "gold"},
        **kw,  # type: ignore[arg-type]
    )


def msg(sid: str, body: str, at: datetime = T0, media: int = 0) -> MessageReceived:
    items = tuple(MediaItem("image/jpeg", f"https://x/{i}") for i in range(media))
    return MessageReceived(sid, PHONE, body, at, "Ana", items)


def fold(*events: object) -> ConversationState:
    state = ConversationState(PHONE)
    for event in events:
        apply(state, event)
    return state


def reply(
    rid: str,
    kind: ReplyKind = "agent",
    parts: tuple[str, ...] = ("ok",),
    *,
    in_reply_to: tuple[str, ...] = (),
    turn_id: str | None = None,
    call_conversation_id: str | None = None,
) -> ReplyRequested:
    return ReplyRequested(
        rid,
        kind,
        parts,
        T0,
        in_reply_to=in_reply_to,
        turn_id=turn_id,
        call_conversation_id=call_conversation_id,
    )


def test_nothing_to_do_without_a_call_or_message() -> None:
    assert next_step(fold()) is None


def test_a_completed_call_leads_to_the_first_message_once() -> None:
    state = fold(call())
    step = next_step(state)
    assert isinstance(step, SendFirstMessage)
    assert step.call.conversation_id == "conv_1"
    apply(state, reply("r1", "first_message", ("Hi Ana",), call_conversation_id="conv_1"))
    apply(state, ReplySent("r1", 0, "SM1", "queued", T0))
    assert next_step(state) is None
    # a second call to the same person opens a new follow-up
    apply(state, call("conv_2"))
    assert isinstance(next_step(state), SendFirstMessage)


def test_replies_in_the_outbox_come_first_and_part_by_part() -> None:
    state = fold(call(), reply("r1", "first_message", ("a", "b"), call_conversation_id="conv_1"))
    apply(state, msg("SMin1", "hello"))
    step = next_step(state)
    assert isinstance(step, DeliverReply)
    assert step.part == 0
    apply(state, ReplySent("r1", 0, "SM1", "queued", T0))
    step = next_step(state)
    assert isinstance(step, DeliverReply)
    assert step.part == 1
    apply(state, ReplyFailed("r1", 1, 21211, 400, "invalid To", T0))
    assert isinstance(next_step(state), AskAgent)


def test_messages_waiting_during_a_turn_are_coalesced_into_the_next() -> None:
    state = fold(call(), reply("r1", "first_message", call_conversation_id="conv_1"))
    apply(state, ReplySent("r1", 0, "SM1", "queued", T0))
    apply(state, msg("SMa", "first question"))
    step = next_step(state)
    assert isinstance(step, AskAgent)
    assert step.message_sids == ("SMa",)
    apply(state, AgentAsked("t1", ("SMa",), step.text, T0))
    apply(state, msg("SMb", "and another"))
    apply(state, msg("SMc", "third"))
    # the open turn is resumed first (after a crash it has no outcome)
    resumed = next_step(state)
    assert isinstance(resumed, AskAgent)
    assert resumed.turn_id == "t1"
    apply(state, AgentAnswered("t1", "answer", 0.2, T0))
    apply(state, reply("r2", in_reply_to=("SMa",), turn_id="t1"))
    apply(state, ReplySent("r2", 0, "SM2", "queued", T0))
    step = next_step(state)
    assert isinstance(step, AskAgent)
    assert step.message_sids == ("SMb", "SMc")
    assert step.text == "and another\nthird"
    assert step.turn_id is None


def test_failed_turn_closes_it() -> None:
    state = fold(msg("SMa", "hi"), AgentAsked("t1", ("SMa",), "hi", T0))
    apply(state, AgentTurnFailed("t1", "timeout", "no answer in 30 s", T0))
    assert state.open_turn is None
    assert next_step(state) is None


def test_media_without_text_gets_a_notice_not_a_turn() -> None:
    state = fold(msg("SMm", "", media=1))
    step = next_step(state)
    assert isinstance(step, NoticeMedia)
    apply(state, reply("r1", "media_notice", in_reply_to=("SMm",)))
    apply(state, ReplySent("r1", 0, "SMx", "queued", T0))
    assert next_step(state) is None


def test_media_with_text_is_asked_with_a_note() -> None:
    step = next_step(fold(msg("SMm", "look at this", media=2)))
    assert isinstance(step, AskAgent)
    assert step.text.startswith("look at this\n[the person also sent 2 attachment(s)")


def test_service_window_is_24_hours_from_the_last_inbound() -> None:
    state = fold(call())
    assert not in_service_window(state, T0)
    apply(state, msg("SMa", "hi", at=T0))
    assert in_service_window(state, T0 + timedelta(hours=23, minutes=59))
    assert not in_service_window(state, T0 + timedelta(hours=24))


def test_first_message_text_and_template_use_the_call() -> None:
    state = fold(call())
    assert state.call is not None
    text = first_message_text(state.call, "Hi {name}! About our call: {summary}")
    assert text.startswith("Hi Ana! About our call: Asked about the invoice")
    template = first_message_template(state.call, "HX123")
    assert template == Template("HX123", {"1": "Ana", "2": state.call.summary})


def test_context_carries_summary_transcript_and_whatsapp_turns() -> None:
    state = fold(call(), msg("SMa", "when is the refund?"))
    apply(state, AgentAsked("t1", ("SMa",), "when is the refund?", T0))
    apply(state, AgentAnswered("t1", "Within 5 days.", 0.3, T0))
    context = compose_context(state)
    assert "Promised a refund of 20 euros" in context
    assert "agent: Hello Ana" in context
    assert "user: when is the refund?" in context
    assert "agent: Within 5 days." in context


def test_history_is_bounded() -> None:
    state = fold()
    for i in range(100):
        apply(state, AgentAsked(f"t{i}", (f"SM{i}",), f"q{i}", T0))
        apply(state, AgentAnswered(f"t{i}", f"a{i}", 0.1, T0))
    assert len(state.history) == 20
    assert state.history[-1].text == "a99"


def test_a_failed_call_is_followed_up_only_when_asked() -> None:
    from events.calls import CallFailed

    assert next_step(fold(CallFailed("conv_f", "agent_1", PHONE, "no-answer"))) is None
    state = fold(CallFailed("conv_f", "agent_1", PHONE, "no-answer", follow_up=True))
    step = next_step(state)
    assert isinstance(step, SendMissedCallMessage)
    apply(state, reply("r1", "first_message", call_conversation_id="conv_f"))
    apply(state, ReplySent("r1", 0, "SM1", "queued", T0))
    assert next_step(state) is None
