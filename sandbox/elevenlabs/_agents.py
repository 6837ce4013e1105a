"""The agents the ElevenLabs stand-in stores: ``AgentConfig`` and the default one.

A module of its own because the session, the HTTP routes and the stand-in all read agents,
and the stand-in imports the other two: kept here, below all three, no import goes back up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from sandbox.elevenlabs._brain import Brain, context_brain

DEFAULT_AGENT_ID = "agent_sandbox"


def _strings(value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):
        raise TypeError("expected a collection of strings, got one string")
    return frozenset(value)


@attrs.frozen
class ClientToolScript:
    """Make the agent call a client tool when a user turn contains ``when``.

    What a real agent does when its LLM picks a client tool (reference §1.5 step 7): it may
    speak first (``say_before``), sends ``client_tool_call`` with a fresh ``tool_call_id``,
    waits up to ``response_timeout_seconds`` for the client's ``client_tool_result`` when
    the tool is configured to wait (``expects_response``), then may speak again
    (``say_after``; ``{result}`` is replaced with the client's result). The brain is not
    asked: the script is the whole turn.

    Attributes:
        when: Matched against the user's text, ignoring case.
        parameters: The call's ``parameters`` object.
    """

    when: str
    tool_name: str
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    say_before: str = ""
    say_after: str = ""
    expects_response: bool = True
    response_timeout_seconds: float = 10.0

    def matches(self, text: str) -> bool:
        return self.when.casefold() in text.casefold()


@attrs.frozen
class AgentConfig:
    """One agent as the platform stores it (the parts the stand-in simulates).

    Attributes:
        first_message: Sent as the first ``agent_response``; ``{{var}}`` placeholders are
            filled from dynamic variables; ``""`` sends none.
        allowed_overrides: Dotted paths under ``conversation_config_override`` the client
            may set ("conversation.text_only", "agent.first_message", "tts.voice_id", ...),
            plus top-level flags such as "custom_llm_extra_body". Anything else is an
            ``override_error`` (1008).
        required_dynamic_variables: Names the prompt uses; a session without them closes
            with ``missing_dynamic_variable`` (1008).
        max_duration_seconds: After this long the session gets ``error`` with
            ``max_duration_exceeded`` (code 1000) and closes 1000, as documented.
        idle_timeout_seconds: After this long without client input (pongs do not count) the
            session gets ``error`` with ``transport_receive_timeout`` (code 1002) and closes
            1002: the AsyncAPI's documented behaviour, chosen over the 1000 an Android SDK PR
            reports, because it is the one in the official schema. Default 60 s as the
            schema's description says; ``None`` disables it.
        stream_text_parts: Send ``agent_chat_response_part`` start/delta/stop before each
            ``agent_response`` (off by default, as in the default ``client_events``).
        requires_auth: Private agent: the WebSocket needs a ``conversation_signature`` from
            ``get-signed-url``.
        text_only: The agent's own ``conversation.text_only``, used when the client sends
            no override.
        client_tools: Client tool calls the agent makes on given user texts (the first
            script that matches a turn runs it).
    """

    agent_id: str
    first_message: str = ""
    allowed_overrides: frozenset[str] = attrs.field(default=frozenset(), converter=_strings)
    required_dynamic_variables: frozenset[str] = attrs.field(
        default=frozenset(), converter=_strings
    )
    max_duration_seconds: float = 600.0
    idle_timeout_seconds: float | None = 60.0
    brain: Brain = context_brain
    name: str = ""
    stream_text_parts: bool = False
    requires_auth: bool = False
    text_only: bool = False
    client_tools: tuple[ClientToolScript, ...] = ()

    def tool_script_for(self, text: str) -> ClientToolScript | None:
        return next((script for script in self.client_tools if script.matches(text)), None)

    @property
    def display_name(self) -> str:
        return self.name or self.agent_id


def default_agents() -> dict[str, AgentConfig]:
    """A fresh stand-in's agents: one public agent, ``DEFAULT_AGENT_ID``."""
    return {
        DEFAULT_AGENT_ID: AgentConfig(
            DEFAULT_AGENT_ID,
            first_message="Hello! How can I help you today?",
            allowed_overrides=frozenset({"conversation.text_only"}),
            name="Sandbox agent",
        )
    }
