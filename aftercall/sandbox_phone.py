"""The console's sandbox phone panel, played by the in-process stand-ins.

The web layer never imports ``sandbox`` (the stand-ins share no code with what they stand
in for); it asks for a ``web.context.SandboxPhone``, and this is the one the composition
root gives it in sandbox mode. Each action goes through the real wire protocols: ending a
call makes the ElevenLabs stand-in deliver its signed post-call webhook to the app, and a
customer's message makes the Twilio stand-in post its signed inbound webhook, exactly as
the real services would.
"""

from __future__ import annotations

import attrs

from sandbox.elevenlabs import DEFAULT_AGENT_ID, ElevenLabsStandIn
from sandbox.twilio import TwilioStandIn


@attrs.frozen
class StandInPhone:
    elevenlabs: ElevenLabsStandIn
    twilio: TwilioStandIn
    agent_id: str = DEFAULT_AGENT_ID

    async def end_call(self, phone: str, name: str, summary: str) -> str:
        variables = {"user_name": name} if name else {}
        record = await self.elevenlabs.complete_call(
            phone,
            agent_id=self.agent_id,
            summary=summary,
            dynamic_variables=variables,
            user_turns=("Hello?", summary),
        )
        return record.conversation_id

    async def customer_writes(self, phone: str, text: str, name: str) -> str:
        return await self.twilio.user_says(phone, text, profile_name=name)
