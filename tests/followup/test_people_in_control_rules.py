"""Who may speak, on values: opt-out and opt-in keywords, take-over and hand-back, Twilio
recipients who cannot receive, and the checks operators' commands go through."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.calls import CallCompleted
from events.conversation import (
    AgentAnswered,
    AgentAsked,
    FirstMessageSkipped,
    HandedBack,
    HumanRequested,
    HumanTookOver,
    MessageReceived,
    OperatorMessageRequested,
    OptedIn,
    OptedOut,
    RecipientUnreachable,
    ReplyKind,
    ReplyRequested,
    ReplySent,
    ReplyWithdrawn,
)
from followup.conversation import (
    AskAgent,
    ConversationState,
    DeliverReply,
    OptIn,
    OptOut,
    Refused,
    RequestHuman,
    Rules,
    SendOperatorMessage,
    SkipFirstMessage,
    SuppressTurn,
    WithdrawReply,
    apply,
    auto_return_at,
    check_hand_back,
    check_operator_message,
    check_take_over,
    compose_context,
    keyword_form,
    next_step,
    skip_reason,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PHONE = "+15551234567"
CALL = CallCompleted("conv_1", "agent_1", PHONE, "Asked about the October invoice.")


def msg(sid: str, body: str, at: datetime = T0) -> MessageReceived:
    return MessageReceived(sid, PHONE, body, at)


def reply(
    rid: str, kind: ReplyKind = "agent", *, in_reply_to: tuple[str, ...] = ()
) -> ReplyRequested:
    return ReplyRequested(rid, kind, ("words",), T0, in_reply_to=in_reply_to)


def fold(*events: object) -> ConversationState:
    state = ConversationState(PHONE)
    for event in events:
        apply(state, event)
        state.version += 1
    return state


FIRST = (
    CALL,
    ReplyRequested("r0", "first_message", ("Hi",), T0, call_conversation_id="conv_1"),
    ReplySent("r0", 0, "SM0", "queued", T0),
)


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("STOP", "stop"),
        ("  Stop!! ", "stop"),
        ("¡Baja!", "baja"),
        ("DESUSCRÍBIR", "desuscribir"),
        ("Cancelár.", "cancelar"),
        ("opt-out", "optout"),
        ("stop all", "stopall"),
        ("Álta", "alta"),
        ("🛑 stop 🛑", "stop"),
    ],
)
def test_keywords_ignore_case_accents_and_punctuation(text: str, form: str) -> None:
    assert keyword_form(text) == form


def test_only_a_message_that_is_nothing_but_the_keyword_opts_out() -> None:
    state = fold(*FIRST, msg("SM1", "please stop calling me at work"))
    assert isinstance(next_step(state), AskAgent)
    state = fold(*FIRST, msg("SM1", "¿cuánto cuesta?"), msg("SM2", "¡BAJA!"))
    assert next_step(state) == OptOut(state.unanswered[1], "baja", ("SM1",))


def test_an_opt_out_comes_before_the_replies_in_the_outbox_and_withdraws_them() -> None:
    asked = AgentAsked("t1", ("SM1",), "question", T0)
    answer = reply("r1", in_reply_to=("SM1",))
    state = fold(*FIRST, msg("SM1", "question"), asked, AgentAnswered("t1", "a", 0.1, T0), answer)
    assert isinstance(next_step(state), DeliverReply)
    apply(state, msg("SM2", "stop"))
    step = next_step(state)
    assert isinstance(step, OptOut)
    apply(state, OptedOut("SM2", "stop", T0))
    apply(state, reply("r2", "optout_confirmation", in_reply_to=("SM2",)))
    step = next_step(state)
    assert isinstance(step, WithdrawReply)
    assert (step.pending.request.reply_id, step.reason) == ("r1", "opted_out")
    apply(state, ReplyWithdrawn("r1", (0,), "opted_out", T0))
    step = next_step(state)
    assert isinstance(step, DeliverReply)
    assert step.pending.request.kind == "optout_confirmation"  # the one message that goes
    apply(state, ReplySent("r2", 0, "SM9", "queued", T0))
    assert next_step(state) is None


def test_while_opted_out_nothing_is_answered_until_an_opt_in() -> None:
    state = fold(*FIRST, msg("SM1", "stop"), OptedOut("SM1", "stop", T0))
    apply(state, msg("SM2", "hello?"))
    apply(state, msg("SM3", "STOP"))  # a second stop: no second confirmation
    assert next_step(state) is None
    apply(state, CallCompleted("conv_2", "agent_1", PHONE, "Called again."))
    assert next_step(state) == SkipFirstMessage("conv_2", "skipped: opted out")
    apply(state, FirstMessageSkipped("conv_2", "skipped: opted out", T0))
    assert next_step(state) is None
    apply(state, msg("SM4", "Start"))
    assert next_step(state) == OptIn(state.unanswered[2], "start", ("SM2", "SM3"))
    apply(state, OptedIn("SM4", "start", T0, ("SM2", "SM3")))
    assert state.unanswered == []
    apply(state, msg("SM5", "what about my invoice?"))
    assert next_step(state) == AskAgent(("SM5",), "what about my invoice?")


def test_configured_keywords_replace_the_defaults() -> None:
    rules = Rules(optout_keywords=("basta",), optin_keywords=("volver",))
    state = fold(*FIRST, msg("SM1", "stop"))
    assert isinstance(next_step(state, rules), AskAgent)
    state = fold(*FIRST, msg("SM1", "¡Basta!"))
    assert isinstance(next_step(state, rules), OptOut)


def test_a_person_at_the_business_silences_the_bot() -> None:
    state = fold(*FIRST, HumanTookOver("Maria", T0, "VIP"))
    apply(state, msg("SM1", "are you a robot?"))
    assert next_step(state) is None  # not asked of the agent, no fallback
    assert state.history[-1].text == "are you a robot?"  # shown to Maria
    apply(state, OperatorMessageRequested("op1", "Maria", "Hi, Maria here.", T0))
    assert next_step(state) == SendOperatorMessage(state.operator_requests[0])
    apply(state, ReplyRequested("r1", "operator", ("Hi, Maria here.",), T0, operator="Maria",
                                operator_request_id="op1"))  # fmt: skip
    assert isinstance(next_step(state), DeliverReply)
    apply(state, CallCompleted("conv_2", "agent_1", PHONE, "Called again."))
    apply(state, ReplySent("r1", 0, "SM8", "queued", T0))
    step = next_step(state)
    assert isinstance(step, SkipFirstMessage)
    assert "a person at the business" in step.reason


def test_an_answer_requested_after_a_take_over_is_withdrawn_not_sent() -> None:
    asked = AgentAsked("t1", ("SM1",), "question", T0)
    state = fold(*FIRST, msg("SM1", "question"), asked, HumanTookOver("Maria", T0))
    # The actor folded an older state when it decided: its intent lands after the take-over.
    apply(state, AgentAnswered("t1", "answer", 0.1, T0))
    apply(state, reply("r1", in_reply_to=("SM1",)))
    step = next_step(state)
    assert isinstance(step, WithdrawReply)
    assert step.reason == "human"


def test_a_turn_open_at_a_crash_is_not_asked_again_once_a_person_has_it() -> None:
    asked = AgentAsked("t1", ("SM1",), "question", T0)
    state = fold(*FIRST, msg("SM1", "question"), asked, HumanTookOver("Maria", T0))
    assert next_step(state) == SuppressTurn(asked, "human")


def test_the_agents_last_words_before_it_asks_for_a_person_go_out() -> None:
    asked = AgentAsked("t1", ("SM1",), "I want a human", T0)
    state = fold(*FIRST, msg("SM1", "I want a human"), asked, AgentAnswered("t1", "Sure.", 1, T0))
    apply(state, reply("r1", in_reply_to=("SM1",)))
    apply(state, HumanRequested("agent", "asked for a human", T0, turn_id="t1"))
    step = next_step(state)
    assert isinstance(step, DeliverReply)
    assert step.pending.request.reply_id == "r1"
    assert state.control == "waiting_for_human"


def test_a_handoff_keyword_asks_for_a_person_when_configured() -> None:
    state = fold(*FIRST, msg("SM1", "hi"), msg("SM2", "¡Humano!"))
    assert isinstance(next_step(state), AskAgent)  # off by default
    rules = Rules(handoff_keywords=("humano", "agent"))
    assert next_step(state, rules) == RequestHuman(state.unanswered[1], "humano", ("SM1", "SM2"))


def test_handing_back_gives_the_agent_the_whole_conversation() -> None:
    state = fold(*FIRST, msg("SM1", "I was charged twice"), HumanTookOver("Maria", T0))
    apply(state, ReplyRequested("r1", "operator", ("Refund approved.",), T0, operator="Maria"))
    apply(state, ReplySent("r1", 0, "SM8", "queued", T0))
    apply(state, msg("SM2", "thanks!"))
    apply(state, HandedBack(T0, operator="Maria"))
    assert next_step(state) is None  # what Maria read is not answered again by the agent
    context = compose_context(state)
    assert "user: I was charged twice" in context
    assert "human operator Maria: Refund approved." in context
    assert "user: thanks!" in context
    assert context.index("I was charged twice") < context.index("Refund approved.")


def test_an_automatic_hand_back_leaves_the_waiting_messages_to_the_agent() -> None:
    state = fold(*FIRST, HumanRequested("customer", "wrote agent", T0), msg("SM1", "hello?"))
    assert next_step(state) is None
    apply(state, HandedBack(T0, operator=None))
    assert isinstance(next_step(state), AskAgent)


def test_auto_return_counts_from_the_last_thing_a_person_did() -> None:
    state = fold(*FIRST, HumanTookOver("Maria", T0))
    assert auto_return_at(state, None) is None
    assert auto_return_at(state, 600) == T0 + timedelta(seconds=600)
    later = T0 + timedelta(minutes=5)
    apply(state, OperatorMessageRequested("op1", "Maria", "One moment.", later))
    assert auto_return_at(state, 600) == later + timedelta(seconds=600)
    apply(state, HandedBack(later, operator="Maria"))
    assert auto_return_at(state, 600) is None


def test_twilio_saying_the_person_cannot_receive_stops_every_send() -> None:
    state = fold(*FIRST, msg("SM1", "hi"), AgentAsked("t1", ("SM1",), "hi", T0))
    apply(state, AgentAnswered("t1", "hello", 0.1, T0))
    apply(state, reply("r1", in_reply_to=("SM1",)))
    apply(state, RecipientUnreachable(63024, "invalid message recipient", T0, message_sid="SM0"))
    step = next_step(state)
    assert isinstance(step, WithdrawReply)
    assert step.reason == "unreachable"
    apply(state, ReplyWithdrawn("r1", (0,), "unreachable", T0))
    apply(state, CallCompleted("conv_2", "agent_1", PHONE, "Called again."))
    assert skip_reason(state) == "skipped: cannot receive (Twilio 63024)"
    apply(state, msg("SM2", "I can read you now"))
    assert state.unreachable is None  # they wrote: they can receive
    assert skip_reason(state) is None


def test_operator_commands_are_checked_against_the_log() -> None:
    with pytest.raises(Refused) as missing:
        check_take_over(ConversationState(PHONE), "Maria")
    assert missing.value.status == 404
    state = fold(*FIRST)
    with pytest.raises(Refused) as closed:
        check_operator_message(state, T0)
    assert closed.value.status == 422  # no message from the person: the window is closed
    apply(state, msg("SM1", "hi", T0))
    check_operator_message(state, T0 + timedelta(hours=23))
    with pytest.raises(Refused) as later:
        check_operator_message(state, T0 + timedelta(hours=24))
    assert later.value.status == 422
    with pytest.raises(Refused) as bot:
        check_hand_back(state)
    assert bot.value.status == 409
    apply(state, HumanTookOver("Maria", T0))
    check_take_over(state, "Maria")
    with pytest.raises(Refused) as taken:
        check_take_over(state, "Luis")
    assert (taken.value.status, "Maria" in taken.value.reason) == (409, True)
    apply(state, msg("SM2", "stop"))
    apply(state, OptedOut("SM2", "stop", T0))
    with pytest.raises(Refused) as opted_out:
        check_operator_message(state, T0)
    assert opted_out.value.status == 409
