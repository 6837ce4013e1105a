"""The whole aftercall, as production runs it, against the stand-ins on loopback.

``running_aftercall`` starts the ElevenLabs and Twilio stand-ins, then the real web app
(``web.app``) under Hypercorn's Trio worker on a free port, built by the real composition
root from environment settings that point at the stand-ins. Tests drive it the way the
outside world does: a call completes, a simulated WhatsApp user writes, Twilio webhooks
arrive signed, the agent answers over a WebSocket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import attrs
import trio

from aftercall.settings import SettingsError
from aftercall.system import System, run_system
from events.calls import CallCompleted, TranscriptLine, call_event_id
from events.codec import to_new_event
from events.conversation import delivery_stream, phone_stream
from events.store import EventStore, RecordedEvent
from sandbox.elevenlabs import DEFAULT_AGENT_ID, ElevenLabsStandIn, serve_elevenlabs
from sandbox.environment import free_port, stand_in_environment
from sandbox.twilio import TwilioStandIn, serve_twilio
from web.factory import TrioOnly, create_app
from web.serving import serve_asgi

SUMMARY = "Ana asked about her October invoice; we promised a refund of 20 euros by Friday."


@attrs.define
class Aftercall:
    elevenlabs: ElevenLabsStandIn
    twilio: TwilioStandIn
    system: System
    store: EventStore
    url: str

    async def complete_call(
        self, phone: str, conversation_id: str = "conv_test1", summary: str = SUMMARY
    ) -> None:
        """What the post-call webhook / batch monitor do: record the call, wake the actor."""
        event = CallCompleted(
            conversation_id=conversation_id,
            agent_id=DEFAULT_AGENT_ID,
            phone=phone,
            summary=summary,
            transcript=(
                TranscriptLine("agent", "Hello Ana, calling about your invoice."),
                TranscriptLine("user", "Yes, I was charged twice."),
            ),
            dynamic_variables={"user_name": "Ana"},
            ended_at=datetime.now(UTC),
            source="test",
        )
        await self.store.append(
            phone_stream(phone), [to_new_event(event, event_id=call_event_id(conversation_id))]
        )
        self.system.notify_phone(phone)

    async def wait_for(
        self,
        predicate: Callable[[RecordedEvent], bool],
        *,
        count: int = 1,
        within: float = 20,
    ) -> list[RecordedEvent]:
        """The first ``count`` events in the log that match, waiting for them to be recorded."""
        found: list[RecordedEvent] = []
        position = 0
        with trio.fail_after(within):
            while True:
                batch = await self.store.read_all(after=position, limit=1000)
                for record in batch:
                    if predicate(record):
                        found.append(record)
                        if len(found) == count:
                            return found
                if batch:
                    position = batch[-1].position
                else:
                    await self.store.wait_for_events(position)

    async def events(self, phone: str) -> list[RecordedEvent]:
        return await self.store.read_stream(phone_stream(phone))

    async def types(self, phone: str) -> list[str]:
        return [e.type for e in await self.events(phone)]


def of_type(type_: str, phone: str | None = None, **data: Any) -> Callable[[RecordedEvent], bool]:
    """Events of ``type_`` with these data fields, in ``phone``'s streams if it is given
    (its conversation, and its delivery statuses beside it)."""
    streams = () if phone is None else (phone_stream(phone), delivery_stream(phone))

    def match(record: RecordedEvent) -> bool:
        if record.type != type_:
            return False
        if streams and record.stream not in streams:
            return False
        return all(record.data.get(k) == v for k, v in data.items())

    return match


@asynccontextmanager
async def running_aftercall(
    store: EventStore,
    *,
    elevenlabs: ElevenLabsStandIn | None = None,
    twilio: TwilioStandIn | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Aftercall]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    async with (
        serve_elevenlabs(elevenlabs or ElevenLabsStandIn()) as el,
        serve_twilio(twilio or TwilioStandIn()) as tw,
    ):
        tw.webhook_url = f"{public}/webhooks/twilio/whatsapp"
        environ = {
            **stand_in_environment(el, tw, public),
            "AFTERCALL_TURN_TIMEOUT": "5",
            **(env or {}),
        }
        app = create_app(
            partial(run_system, environ=environ, store=store), quiet_errors=(SettingsError,)
        )
        async with serve_asgi(TrioOnly(app), port=port) as url:
            system: System = app.config["AFTERCALL_SYSTEM"]
            yield Aftercall(el, tw, system, store, url)
