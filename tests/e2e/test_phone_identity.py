"""One person, two forms of one number: a Mexican mobile is called as ``+52`` + 10 digits,
but its WhatsApp account writes as ``+521`` + 10 digits. Through the real web app, the post-call
webhook and the Twilio webhook land in one phone actor and one conversation, and the replies
go to the address that wrote (events/phones.py)."""

from __future__ import annotations

from events.conversation import phone_stream
from events.store import EventStore
from sandbox.elevenlabs import ElevenLabsStandIn
from tests.e2e.harness import of_type, running_aftercall
from web.post_call import PATH

SECRET = "wsec_test_0123456789abcdef"
CALLED = "+525512345678"  # the number the agent dialled
WHATSAPP = "+5215512345678"  # the same person's WhatsApp account


async def test_a_mexican_call_continues_with_the_whatsapp_form_of_its_number(
    store: EventStore,
) -> None:
    standin = ElevenLabsStandIn(webhook_secret=SECRET)
    env = {"ELEVENLABS_WEBHOOK_SECRET": SECRET}
    async with running_aftercall(store, elevenlabs=standin, env=env) as ac:
        ac.elevenlabs.webhook_url = f"{ac.url}{PATH}"
        await ac.elevenlabs.complete_call(
            CALLED, summary="Lucía asked to move her appointment to Friday."
        )
        await ac.wait_for(of_type("ReplySent", CALLED))
        [first] = ac.twilio.received(CALLED)

        await ac.twilio.user_says(WHATSAPP, "What did we discuss on the phone?")
        await ac.wait_for(of_type("ReplySent", CALLED), count=2)
        answer = ac.twilio.received(WHATSAPP)
        events = await ac.store.read_stream(phone_stream(CALLED))
        stray = await ac.store.read_stream(phone_stream(WHATSAPP))

    assert first.body.startswith("Hi")
    [reply] = answer
    assert "Lucía asked to move her appointment to Friday." in reply.body  # in context
    types = [e.type for e in events]
    assert types[0] == "CallCompleted"
    [received] = [e for e in events if e.type == "MessageReceived"]
    assert received.data["phone"] == CALLED
    assert received.data["address"] == WHATSAPP
    [to_whatsapp] = [e for e in events if e.type == "ReplyRequested" and e.data["to"]]
    assert to_whatsapp.data["to"] == WHATSAPP
    assert stray == []  # no second actor, no second conversation
