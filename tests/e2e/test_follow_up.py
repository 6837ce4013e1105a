"""The WhatsApp follow-up, end to end, through the real web app and the stand-ins."""

from __future__ import annotations

import trio

from events.store import EventStore
from tests.e2e.harness import SUMMARY, of_type, running_aftercall

ANA = "+15551230001"


async def test_call_then_whatsapp_conversation_in_context(store: EventStore) -> None:
    async with running_aftercall(store) as ac:
        await ac.complete_call(ANA)
        await ac.wait_for(of_type("ReplySent", ANA))
        first = ac.twilio.received(ANA)
        assert len(first) == 1
        assert first[0].body.startswith("Hi Ana, thanks for talking with us")

        await ac.twilio.user_says(ANA, "Hello! What did we discuss on the phone?")
        await ac.wait_for(of_type("ReplySent", ANA), count=2)
        replies = ac.twilio.received(ANA)
        assert len(replies) == 2
        assert "We discussed:" in replies[1].body
        assert SUMMARY in replies[1].body

        types = await ac.types(ANA)
        assert types[:3] == ["CallCompleted", "ReplyRequested", "ReplySent"]
        for expected in (
            "MessageReceived",
            "AgentSessionOpened",
            "AgentAsked",
            "AgentAnswered",
            "ReplyRequested",
            "ReplySent",
        ):
            assert expected in types


async def test_three_phones_concurrently_without_crosstalk(store: EventStore) -> None:
    phones = ["+15551230011", "+15551230012", "+15551230013"]
    async with running_aftercall(store) as ac:
        async with trio.open_nursery() as nursery:
            for phone in phones:
                nursery.start_soon(ac.complete_call, phone, f"conv_{phone[-2:]}")
        await ac.wait_for(of_type("ReplySent"), count=3)

        async def talk(phone: str) -> None:
            await ac.twilio.user_says(phone, f"my code is {phone[-4:]}")
            await ac.wait_for(of_type("ReplySent", phone), count=2)

        async with trio.open_nursery() as nursery:
            for phone in phones:
                nursery.start_soon(talk, phone)
        for phone in phones:
            bodies = [m.body for m in ac.twilio.received(phone)]
            assert len(bodies) == 2
            assert bodies[1] == f"You said: my code is {phone[-4:]}"
