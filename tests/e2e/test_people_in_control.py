"""People in control, end to end: hand-off to a person, opt-out, recipients who cannot receive.

The real app on a real socket against the stand-ins, on SQLite and on PostgreSQL (the
``store`` fixture). Operators act through the JSON API as a script or the console would;
the person writes through the Twilio stand-in; the agent is the ElevenLabs stand-in, told
to call its hand-off tool on a given text. Every wait is on the log (or the stand-ins'
records) under a deadline; where the point is that nothing happens, a later observable
step of the same phone actor (it handles one message at a time, in order) shows that the
earlier one was handled and sent nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from events.store import EventStore, RecordedEvent
from followup.phone import HANDOFF_TOOL_RESULT
from sandbox.elevenlabs import ClientToolScript, ElevenLabsStandIn, Faults, sign
from sandbox.twilio import TwilioStandIn
from tests.e2e.harness import Aftercall, of_type, running_aftercall
from web.post_call import PATH

ANA = "+15551230001"
BOB = "+15551230002"
CARL = "+15551230003"
TOKEN = "admin-token-for-people-in-control"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "wsec_people_in_control_0123456789"


@asynccontextmanager
async def aftercall(
    store: EventStore,
    *,
    env: dict[str, str] | None = None,
    elevenlabs: ElevenLabsStandIn | None = None,
    twilio: TwilioStandIn | None = None,
) -> AsyncIterator[Aftercall]:
    """aftercall with the admin API on and the post-call webhook wired to the stand-in."""
    standin = elevenlabs or ElevenLabsStandIn(webhook_secret=SECRET)
    environ = {"AFTERCALL_ADMIN_TOKEN": TOKEN, "ELEVENLABS_WEBHOOK_SECRET": SECRET, **(env or {})}
    async with running_aftercall(store, elevenlabs=standin, twilio=twilio, env=environ) as ac:
        ac.elevenlabs.webhook_url = f"{ac.url}{PATH}"
        yield ac


async def api(ac: Aftercall, method: str, path: str, **kwargs: Any) -> httpx.Response:
    if method == "GET":  # the read models follow the log: let them catch up with it
        runner = ac.system.projections
        assert runner is not None
        with trio.fail_after(20):
            await runner.wait_until(await ac.store.head())
    async with httpx.AsyncClient(base_url=ac.url, headers=AUTH) as http:
        return await http.request(method, f"/api{path}", **kwargs)


async def first_message_sent(ac: Aftercall, phone: str, conversation_id: str) -> None:
    await ac.complete_call(phone, conversation_id)
    await ac.wait_for(of_type("ReplySent", phone))
    # The session opened ahead of the person's first answer (the prewarm) is in the log
    # before anyone else writes: what follows is about the conversation, not that race.
    await ac.wait_for(of_type("AgentSessionOpened", phone))


def user_turns(ac: Aftercall) -> list[str]:
    """Everything any agent session was asked, in every session."""
    return [
        turn.text
        for session in ac.elevenlabs.sessions.values()
        for turn in session.turns
        if turn.role == "user"
    ]


def bodies(ac: Aftercall, phone: str) -> list[str]:
    return [m.body for m in ac.twilio.received(phone)]


async def kinds_sent(ac: Aftercall, phone: str) -> list[str]:
    """The kind of every reply part Twilio took, in the order it took them."""
    events = await ac.events(phone)
    kind_of = {e.data["reply_id"]: e.data["kind"] for e in events if e.type == "ReplyRequested"}
    return [kind_of[e.data["reply_id"]] for e in events if e.type == "ReplySent"]


def _after(events: list[RecordedEvent], type_: str) -> list[RecordedEvent]:
    index = next(i for i, e in enumerate(events) if e.type == type_)
    return events[index + 1 :]


# -- hand-off -----------------------------------------------------------------------------


async def test_take_over_then_inbound_reaches_neither_the_agent_nor_the_phone(
    store: EventStore,
) -> None:
    async with aftercall(store) as ac:
        await first_message_sent(ac, ANA, "conv_take_over")
        took = await api(ac, "POST", f"/conversations/{ANA}/handoff", json={"reason": "VIP"})
        assert (took.status_code, took.json()) == (
            200,
            {"phone": ANA, "recorded": True, "control": "human", "operator": "api"},
        )
        [over] = await ac.wait_for(of_type("HumanTookOver", ANA))
        assert (over.data["operator"], over.data["reason"]) == ("api", "VIP")
        # The session is closed: the next one, after the hand-back, is primed afresh.
        await ac.wait_for(of_type("AgentSessionClosed", ANA))

        await ac.twilio.user_says(ANA, "Are you a robot?")
        await ac.wait_for(of_type("MessageReceived", ANA))
        listed = await api(ac, "GET", "/conversations", params={"state": "with_human"})
        # The operator writes after the message: its send is the phone actor's next step,
        # so once it is out, the message before it was handled, and sent nothing.
        sent = await api(ac, "POST", f"/conversations/%2B{ANA[1:]}/messages",
                         json={"text": "Hi Ana, Maria here.", "operator": "Maria"})  # fmt: skip
        assert (sent.status_code, sent.json()["status"]) == (202, "requested")
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        events = await ac.events(ANA)

    assert bodies(ac, ANA)[1:] == ["Hi Ana, Maria here."]
    assert await kinds_sent(ac, ANA) == ["first_message", "operator"]
    assert "Are you a robot?" not in user_turns(ac)
    assert not [e for e in events if e.type in ("AgentAsked", "AgentTurnFailed")]
    [operator_reply] = [e for e in events if e.type == "ReplyRequested" and e.data["operator"]]
    assert operator_reply.data["operator"] == "Maria"
    [row] = listed.json()["conversations"]
    assert (row["phone"], row["state"], row["control_by"]) == (ANA, "with_human", "api")


async def test_take_over_mid_turn_suppresses_the_answer(store: EventStore) -> None:
    async with aftercall(store) as ac:
        await first_message_sent(ac, ANA, "conv_mid_turn")
        # The agent takes its time: the turn is recorded (AgentAsked) while it thinks.
        ac.elevenlabs.set_faults(Faults(reply_delay_seconds=3.0))
        await ac.twilio.user_says(ANA, "Where is my refund?")
        await ac.wait_for(of_type("AgentAsked", ANA))
        took = await api(ac, "POST", f"/conversations/{ANA}/handoff")
        assert took.status_code == 200
        [withdrawn] = await ac.wait_for(of_type("ReplyWithdrawn", ANA))
        await api(ac, "POST", f"/conversations/{ANA}/messages", json={"text": "Looking now."})
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        events = await ac.events(ANA)

    assert withdrawn.data["reason"] == "human"
    [answer] = [e for e in events if e.type == "ReplyRequested" and e.data["kind"] == "agent"]
    assert answer.data["reply_id"] == withdrawn.data["reply_id"]
    assert answer.data["parts"] == ["You said: Where is my refund?"]  # recorded, not sent
    after = _after(events, "HumanTookOver")
    assert [e.data["part"] for e in after if e.type == "ReplySent"] == [0]  # the operator's
    assert await kinds_sent(ac, ANA) == ["first_message", "operator"]
    assert bodies(ac, ANA)[1:] == ["Looking now."]


async def test_resume_primes_the_agent_with_the_persons_messages(store: EventStore) -> None:
    async with aftercall(store) as ac:
        await first_message_sent(ac, ANA, "conv_resume")
        await ac.twilio.user_says(ANA, "I need a person please")
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        told = "Your refund of 20 euros was approved today."
        sent = await api(ac, "POST", f"/conversations/{ANA}/messages", json={"text": told})
        assert sent.status_code == 202  # the bot had it: writing took it over
        await ac.wait_for(of_type("ReplySent", ANA), count=3)
        back = await api(ac, "POST", f"/conversations/{ANA}/resume", json={"operator": "Maria"})
        assert (back.status_code, back.json()["control"]) == (200, "bot")
        again = await api(ac, "POST", f"/conversations/{ANA}/resume")
        assert again.status_code == 409  # the bot has it already
        await ac.twilio.user_says(ANA, "Can you summarise what we talked about?")
        await ac.wait_for(of_type("ReplySent", ANA), count=4)
        opened = await ac.wait_for(of_type("AgentSessionOpened", ANA), count=2)
        primed = ac.elevenlabs.session(opened[1].data["agent_conversation_id"])

    answer = bodies(ac, ANA)[-1]
    assert told in answer  # the agent knows what the person was told
    context = "\n".join(text for _, text in primed.contextual_updates)
    assert f"human operator api: {told}" in context
    assert "user: I need a person please" in context


async def test_the_agent_asks_for_a_person_with_its_client_tool(store: EventStore) -> None:
    async with aftercall(store) as ac:
        ac.elevenlabs.call_client_tool_on(
            ClientToolScript(
                "speak to a person",
                "handoff_to_human",
                parameters={"reason": "asked for a human"},
                say_after="Of course: a colleague will take over here.",
            )
        )
        ac.elevenlabs.call_client_tool_on(ClientToolScript("manager", "handoff_to_human"))
        ac.elevenlabs.call_client_tool_on(
            ClientToolScript("a human", "handoff_to_human", say_before="One moment, please.")
        )
        await first_message_sent(ac, ANA, "conv_tool_words")
        await ac.twilio.user_says(ANA, "Can I speak to a person?")
        [asked] = await ac.wait_for(of_type("HumanRequested", ANA))
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        waiting = await api(ac, "GET", "/conversations", params={"waiting": "true"})

        # Without words of its own, the hand-off notice tells the person.
        await first_message_sent(ac, BOB, "conv_tool_silent")
        await ac.twilio.user_says(BOB, "Get me your manager")
        await ac.wait_for(of_type("HumanRequested", BOB))
        await ac.wait_for(of_type("ReplySent", BOB), count=2)

        # Words first, unstreamed, then the call: the words end the turn (relayed once),
        # the call comes after it and is recorded all the same.
        await first_message_sent(ac, CARL, "conv_tool_after")
        await ac.twilio.user_says(CARL, "Let me talk to a human")
        [late] = await ac.wait_for(of_type("HumanRequested", CARL))
        await ac.wait_for(of_type("AgentSessionClosed", CARL))
        sessions = [s for s in ac.elevenlabs.sessions.values() if s.tool_calls]
        carl = await ac.events(CARL)

    assert (asked.data["by"], asked.data["reason"]) == ("agent", "asked for a human")
    assert bodies(ac, ANA)[1:] == ["Of course: a colleague will take over here."]
    assert bodies(ac, BOB)[1:] == ["Thanks! A person from our team will answer you here shortly."]
    for session in sessions:
        [call] = session.tool_calls
        assert call["tool_name"] == "handoff_to_human"
        assert session.tool_results[call["tool_call_id"]] == {
            "type": "client_tool_result",
            "tool_call_id": call["tool_call_id"],
            "result": HANDOFF_TOOL_RESULT,
            "is_error": False,
        }
    assert asked.data["tool_call_id"] in {s.tool_calls[0]["tool_call_id"] for s in sessions}
    assert len(sessions) == 3
    assert bodies(ac, CARL)[1:] == ["One moment, please."]
    assert late.data["by"] == "agent"
    assert [e.type for e in carl].count("ReplyRequested") == 2  # no notice on top
    [row] = waiting.json()["conversations"]
    assert (row["phone"], row["state"], row["control_by"]) == (ANA, "waiting_for_human", "agent")


async def test_operator_commands_refuse_what_cannot_be_done(store: EventStore) -> None:
    async with aftercall(store) as ac:
        missing = await api(ac, "POST", "/conversations/+15559990000/handoff")
        await first_message_sent(ac, ANA, "conv_refusals")
        # No message from Ana yet: the 24-hour window is closed, free text cannot go.
        closed = await api(ac, "POST", f"/conversations/{ANA}/messages", json={"text": "Hi"})
        took = await api(ac, "POST", f"/conversations/{ANA}/handoff", json={"operator": "Maria"})
        other = await api(ac, "POST", f"/conversations/{ANA}/handoff", json={"operator": "Luis"})
        same = await api(ac, "POST", f"/conversations/{ANA}/handoff", json={"operator": "Maria"})
        no_text = await api(ac, "POST", f"/conversations/{ANA}/messages", json={"text": " "})
        events = await ac.events(ANA)

    assert missing.status_code == 404
    assert closed.status_code == 422
    assert "24-hour" in closed.json()["error"]
    assert "template" in closed.json()["error"]
    assert took.status_code == 200
    assert (other.status_code, "Maria" in other.json()["error"]) == (409, True)
    assert (same.status_code, same.json()["recorded"]) == (200, False)
    assert no_text.status_code == 400
    assert [e.type for e in events].count("HumanTookOver") == 1
    assert "OperatorMessageRequested" not in [e.type for e in events]


async def test_outside_the_window_the_operator_sends_the_approved_template(
    store: EventStore,
) -> None:
    twilio = TwilioStandIn()
    sid = twilio.register_template("Hi {{1}}, about our call: {{2}} Reply here any time.")
    env = {"AFTERCALL_FIRST_MESSAGE_TEMPLATE_SID": sid}
    async with aftercall(store, twilio=twilio, env=env) as ac:
        await first_message_sent(ac, ANA, "conv_template_offer")
        # Ana never wrote back: the window is closed, free text would not be delivered.
        text = await api(ac, "POST", f"/conversations/{ANA}/messages", json={"text": "Hi"})
        both = await api(
            ac, "POST", f"/conversations/{ANA}/messages", json={"text": "Hi", "template": True}
        )
        sent = await api(
            ac,
            "POST",
            f"/conversations/{ANA}/messages",
            json={"template": True, "operator": "Maria"},
            headers={**AUTH, "Idempotency-Key": "template-1"},
        )
        again = await api(
            ac,
            "POST",
            f"/conversations/{ANA}/messages",
            json={"template": True, "operator": "Maria"},
            headers={**AUTH, "Idempotency-Key": "template-1"},
        )
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        await ac.twilio.user_says(ANA, "Oh, hi! Yes, still interested.")
        await ac.wait_for(of_type("MessageReceived", ANA))
        # Held by Maria now: the person's answer reaches no agent, and nothing else went.
        events = await ac.events(ANA)
        conversation = (await api(ac, "GET", f"/conversations/{ANA}")).json()

    assert (text.status_code, "template" in text.json()["error"]) == (422, True)
    assert both.status_code == 400
    assert (sent.status_code, again.status_code, again.json()["recorded"]) == (202, 200, False)
    first, second = ac.twilio.received(ANA)
    assert first.content_sid == second.content_sid == sid
    assert second.body.startswith("Hi Ana, about our call:")
    [request] = [e for e in events if e.type == "OperatorMessageRequested"]
    assert request.data["template"]["content_sid"] == sid
    assert request.data["operator"] == "Maria"
    replies = [e.data for e in events if e.type == "ReplyRequested"]
    assert [(r["kind"], r["template"] is not None) for r in replies] == [
        ("first_message", True),
        ("operator", True),
    ]
    assert conversation["control"] == "human"
    assert "Oh, hi! Yes, still interested." not in user_turns(ac)


async def test_no_template_to_offer_is_a_clear_refusal(store: EventStore) -> None:
    async with aftercall(store) as ac:
        await first_message_sent(ac, ANA, "conv_no_template")
        refused = await api(ac, "POST", f"/conversations/{ANA}/messages", json={"template": True})
        wrong = await api(ac, "POST", f"/conversations/{ANA}/messages", json={"template": "yes"})
        events = await ac.events(ANA)

    assert refused.status_code == 422
    assert "AFTERCALL_FIRST_MESSAGE_TEMPLATE_SID" in refused.json()["error"]
    assert wrong.status_code == 400
    assert "OperatorMessageRequested" not in [e.type for e in events]
    assert "HumanTookOver" not in [e.type for e in events]


# -- opt-out ------------------------------------------------------------------------------


def _transcription(conversation_id: str, phone: str) -> str:
    return json.dumps(
        {
            "type": "post_call_transcription",
            "event_timestamp": int(time.time()),
            "data": {
                "agent_id": "agent_sandbox",
                "conversation_id": conversation_id,
                "status": "done",
                "transcript": [{"role": "agent", "message": "Hi", "time_in_call_secs": 0}],
                "metadata": {
                    "start_time_unix_secs": 1_700_000_000,
                    "call_duration_secs": 30,
                    "phone_call": {"external_number": phone},
                },
                "analysis": {"transcript_summary": "We called again."},
            },
        }
    )


async def post_call(ac: Aftercall, conversation_id: str, phone: str) -> httpx.Response:
    body = _transcription(conversation_id, phone)
    headers = {"ElevenLabs-Signature": sign(body, SECRET, int(time.time()))}
    async with httpx.AsyncClient() as http:
        return await http.post(f"{ac.url}{PATH}", content=body, headers=headers)


async def _opt_out_round(
    ac: Aftercall, stop: str, start: str, confirmations: tuple[str, str]
) -> list[RecordedEvent]:
    """Opt out with ``stop``, write again, get called again, opt in with ``start``."""
    await ac.elevenlabs.complete_call(ANA, dynamic_variables={"user_name": "Ana"})
    await ac.wait_for(of_type("ReplySent", ANA))
    await ac.twilio.user_says(ANA, stop)
    [out] = await ac.wait_for(of_type("OptedOut", ANA))
    await ac.wait_for(of_type("ReplySent", ANA), count=2)
    assert bodies(ac, ANA)[1] == confirmations[0]
    await ac.twilio.user_says(ANA, "hello? is anyone there?")
    # A later call: its first message is skipped, and the webhook says so.
    answered = await post_call(ac, "conv_later_call", ANA)
    assert answered.json()["follow_up"] == "skipped: opted out"
    [skipped] = await ac.wait_for(of_type("FirstMessageSkipped", ANA))
    assert skipped.data["reason"] == "skipped: opted out"
    assert len(bodies(ac, ANA)) == 2  # the skip was the actor's next step: nothing else went
    stopped = await api(ac, "POST", f"/conversations/{ANA}/messages", json={"text": "Hi"})
    assert stopped.status_code == 409
    assert "opted out" in stopped.json()["error"]
    optouts = (await api(ac, "GET", "/optouts")).json()["optouts"]
    assert [(r["phone"], r["state"], r["keyword"]) for r in optouts] == [
        (ANA, "opted_out", out.data["keyword"])
    ]

    await ac.twilio.user_says(ANA, start)
    await ac.wait_for(of_type("OptedIn", ANA))
    await ac.wait_for(of_type("ReplySent", ANA), count=3)
    assert bodies(ac, ANA)[2] == confirmations[1]
    await ac.twilio.user_says(ANA, "thanks, bye")
    await ac.wait_for(of_type("ReplySent", ANA), count=4)
    assert (await api(ac, "GET", "/optouts")).json()["optouts"] == []
    return await ac.events(ANA)


async def test_opt_out_in_english_is_confirmed_once_and_start_resumes(store: EventStore) -> None:
    async with aftercall(store) as ac:
        events = await _opt_out_round(
            ac,
            "  Stop!! ",
            "start",
            (
                "You won't get any more messages from us here. Reply START if you'd like to "
                "hear from us again.",
                "Welcome back! You'll get our messages here again.",
            ),
        )
    assert bodies(ac, ANA)[3] == "You said: thanks, bye"  # only what came after START
    assert "hello? is anyone there?" not in user_turns(ac)
    assert [e.data["keyword"] for e in events if e.type == "OptedOut"] == ["stop"]


async def test_opt_out_in_spanish_with_accents_and_case(store: EventStore) -> None:
    async with aftercall(store, env={"AFTERCALL_LANGUAGE": "es"}) as ac:
        events = await _opt_out_round(
            ac,
            "¡DesuscrÍbir!",
            "Álta.",
            (
                "No recibirás más mensajes nuestros por aquí. Responde ALTA si quieres volver "
                "a recibirlos.",
                "¡Hola de nuevo! Volverás a recibir nuestros mensajes por aquí.",
            ),
        )
    assert bodies(ac, ANA)[0].startswith("Hola Ana, gracias por hablar con nosotros")
    assert [e.data["keyword"] for e in events if e.type == "OptedOut"] == ["desuscribir"]


async def test_an_opt_out_withdraws_the_answer_in_flight(store: EventStore) -> None:
    async with aftercall(store) as ac:
        await first_message_sent(ac, ANA, "conv_stop_mid_turn")
        ac.elevenlabs.set_faults(Faults(reply_delay_seconds=3.0))
        await ac.twilio.user_says(ANA, "tell me about my invoice")
        await ac.wait_for(of_type("AgentAsked", ANA))
        await ac.twilio.user_says(ANA, "BAJA")
        [withdrawn] = await ac.wait_for(of_type("ReplyWithdrawn", ANA))
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
    assert withdrawn.data["reason"] == "opted_out"
    assert await kinds_sent(ac, ANA) == ["first_message", "optout_confirmation"]


# -- recipients who cannot receive ----------------------------------------------------------


async def test_twilio_recipient_errors_stop_sends_and_are_listed(store: EventStore) -> None:
    twilio = TwilioStandIn()
    twilio.refuse_recipient(ANA, 21610)  # refused on create
    twilio.refuse_recipient(BOB, 63024)  # accepted, then failed in the status callback
    async with aftercall(store, twilio=twilio) as ac:
        await ac.complete_call(ANA, "conv_unsubscribed")
        [failed] = await ac.wait_for(of_type("ReplyFailed", ANA))
        await ac.wait_for(of_type("RecipientUnreachable", ANA))
        await ac.complete_call(BOB, "conv_invalid")
        [unreachable] = await ac.wait_for(of_type("RecipientUnreachable", BOB))
        listed = (await api(ac, "GET", "/optouts")).json()["optouts"]
        refused = await api(ac, "POST", f"/conversations/{BOB}/messages", json={"text": "Hi"})
        # Another call: no first message, nothing sent, nothing retried.
        await ac.complete_call(ANA, "conv_unsubscribed_again")
        [skipped] = await ac.wait_for(of_type("FirstMessageSkipped", ANA))

        # Bob writes: he can receive after all, and the agent answers.
        twilio.accept_recipient(BOB)
        await ac.twilio.user_says(BOB, "hello there")
        await ac.wait_for(of_type("ReplySent", BOB), count=2)
        after = (await api(ac, "GET", "/optouts", params={"all": "true"})).json()["optouts"]

    assert failed.data["error_code"] == 21610
    assert unreachable.data["error_code"] == 63024
    assert unreachable.data["message_sid"] == ac.twilio.received(BOB)[0].sid
    assert {(r["phone"], r["state"], r["error_code"]) for r in listed} == {
        (ANA, "unreachable", 21610),
        (BOB, "unreachable", 63024),
    }
    assert refused.status_code == 409
    assert skipped.data["reason"] == "skipped: cannot receive (Twilio 21610)"
    assert len(ac.twilio.received(ANA)) == 0
    assert bodies(ac, BOB)[-1] == "You said: hello there"
    assert {(r["phone"], r["state"]) for r in after} == {
        (ANA, "unreachable"),
        (BOB, "reachable"),
    }


# -- restarts -------------------------------------------------------------------------------


async def test_a_restart_at_each_step_changes_nothing(store: EventStore) -> None:
    """Each step in its own run of aftercall on the same log: what the log says stands."""
    twilio = TwilioStandIn()
    elevenlabs = ElevenLabsStandIn(webhook_secret=SECRET)
    async with aftercall(store, elevenlabs=elevenlabs, twilio=twilio) as ac:
        await first_message_sent(ac, ANA, "conv_restarts")
        await ac.twilio.user_says(ANA, "hello")
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        assert (await api(ac, "POST", f"/conversations/{ANA}/handoff")).status_code == 200
        await ac.wait_for(of_type("HumanTookOver", ANA))
    async with aftercall(store, elevenlabs=elevenlabs, twilio=twilio) as ac:
        assert ac.system.resumed_phones == 0
        await ac.twilio.user_says(ANA, "is it still you?")
        await ac.wait_for(of_type("MessageReceived", ANA), count=2)
    async with aftercall(store, elevenlabs=elevenlabs, twilio=twilio) as ac:
        sent = await api(ac, "POST", f"/conversations/{ANA}/messages", json={"text": "Yes."})
        assert sent.status_code == 202
        await ac.wait_for(of_type("ReplySent", ANA), count=3)
    async with aftercall(store, elevenlabs=elevenlabs, twilio=twilio) as ac:
        assert (await api(ac, "POST", f"/conversations/{ANA}/resume")).status_code == 200
        await ac.wait_for(of_type("HandedBack", ANA))
    async with aftercall(store, elevenlabs=elevenlabs, twilio=twilio) as ac:
        await ac.twilio.user_says(ANA, "stop")
        await ac.wait_for(of_type("ReplySent", ANA), count=4)
    async with aftercall(store, elevenlabs=elevenlabs, twilio=twilio) as ac:
        await ac.twilio.user_says(ANA, "anyone?")
        await ac.twilio.user_says(ANA, "Start")
        await ac.wait_for(of_type("ReplySent", ANA), count=5)
        await ac.twilio.user_says(ANA, "what did I say")
        await ac.wait_for(of_type("ReplySent", ANA), count=6)

    assert await kinds_sent(ac, ANA) == [
        "first_message",
        "agent",
        "operator",
        "optout_confirmation",
        "optin_confirmation",
        "agent",
    ]
    assert "is it still you?" not in user_turns(ac)
    assert "anyone?" not in user_turns(ac)
    assert bodies(ac, ANA)[2] == "Yes."


async def test_nobody_answering_hands_the_conversation_back_after_a_while(
    store: EventStore,
) -> None:
    async with aftercall(
        store, env={"AFTERCALL_HANDOFF_AUTO_RETURN": "1", "AFTERCALL_HANDOFF_KEYWORDS": "human"}
    ) as ac:
        await first_message_sent(ac, ANA, "conv_auto_return")
        await ac.twilio.user_says(ANA, "Human!")
        await ac.wait_for(of_type("HumanRequested", ANA))
        await ac.twilio.user_says(ANA, "is anybody there?")
        # Nobody took it over within a second: the bot has it again and answers what waits.
        [back] = await ac.wait_for(of_type("HandedBack", ANA))
        await ac.wait_for(of_type("ReplySent", ANA), count=3)
    assert back.data["operator"] is None
    assert bodies(ac, ANA)[1:] == [
        "Thanks! A person from our team will answer you here shortly.",
        "You said: is anybody there?",
    ]


async def test_a_retried_operator_message_is_sent_once(store: EventStore) -> None:
    async with aftercall(store) as ac:
        await first_message_sent(ac, ANA, "conv_idempotent")
        await ac.twilio.user_says(ANA, "hello")
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        key = {"Idempotency-Key": "console-42"}
        first = await api(ac, "POST", f"/conversations/{ANA}/messages",
                          json={"text": "Once."}, headers=key)  # fmt: skip
        again = await api(ac, "POST", f"/conversations/{ANA}/messages",
                          json={"text": "Once."}, headers=key)  # fmt: skip
        await ac.wait_for(of_type("ReplySent", ANA), count=3)
        events = await ac.events(ANA)
    assert (first.status_code, again.status_code) == (202, 200)
    assert (first.json()["recorded"], again.json()["recorded"]) == (True, False)
    assert [e.type for e in events].count("OperatorMessageRequested") == 1
    assert bodies(ac, ANA).count("Once.") == 1
