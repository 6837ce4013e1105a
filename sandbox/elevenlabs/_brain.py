"""The agent's "LLM": deterministic, answering only from what the session was given.

Tests of aftercall need to know whether context crossed the system (did the phone call's
summary reach the WhatsApp agent?), so the default brain repeats its context back instead
of inventing text. A test that needs particular answers passes its own ``Brain``: any
callable taking the session context and the user's text and returning the answer, sync or
async.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import attrs

from sandbox.elevenlabs._protocol import effective_contextual_updates


@attrs.frozen
class Turn:
    """One line of the conversation so far."""

    role: Literal["user", "agent"]
    text: str


@attrs.frozen
class SessionContext:
    """Everything the agent knows when it answers a user turn.

    Attributes:
        turns: Earlier turns, oldest first, not including the text being answered (the
            first message, if one was sent, is the first agent turn).
        contextual_updates: ``(context_id, text)`` pairs as received; use
            ``known_updates`` for the ones still in context.
    """

    agent_id: str
    conversation_id: str
    dynamic_variables: Mapping[str, Any] = attrs.field(factory=dict)
    contextual_updates: tuple[tuple[str | None, str], ...] = ()
    turns: tuple[Turn, ...] = ()

    @property
    def known_updates(self) -> tuple[str, ...]:
        return effective_contextual_updates(self.contextual_updates)

    @property
    def user_turns(self) -> tuple[str, ...]:
        return tuple(turn.text for turn in self.turns if turn.role == "user")


Brain = Callable[[SessionContext, str], "str | Awaitable[str]"]

_RECALL_WORDS = ("discuss", "talk about", "talked about", "summary", "summarise", "summarize")


def context_brain(context: SessionContext, text: str) -> str:
    """The default brain. Its rules, in order (matching is case-insensitive):

    1. Asked what was discussed (the text contains "discuss", "talk about", "talked about",
       "summary", "summarise" or "summarize"): ``"We discussed: " + " | ".join(sources)``,
       where sources are the ``call_summary`` dynamic variable (if given) followed by the
       contextual updates still in context. With no source:
       ``"I have no record of an earlier conversation."``
    2. Asked "what did I say": ``"You said: " + " | ".join(earlier user turns)``, or
       ``"You have not said anything yet."``
    3. Asked "my name": ``"Your name is {user_name}."`` from the ``user_name`` variable, or
       ``"I do not know your name."``
    4. Anything else: ``"You said: {text}"``.
    """
    lowered = text.lower()
    if any(word in lowered for word in _RECALL_WORDS):
        sources: list[str] = []
        summary = context.dynamic_variables.get("call_summary")
        if summary is not None and str(summary) != "":
            sources.append(str(summary))
        sources.extend(context.known_updates)
        if sources:
            return "We discussed: " + " | ".join(sources)
        return "I have no record of an earlier conversation."
    if "what did i say" in lowered:
        said = context.user_turns
        return "You said: " + " | ".join(said) if said else "You have not said anything yet."
    if "my name" in lowered:
        name = context.dynamic_variables.get("user_name")
        return f"Your name is {name}." if name else "I do not know your name."
    return f"You said: {text}"


def scripted_brain(*replies: str) -> Brain:
    """A brain that gives ``replies`` in order, one per user turn, repeating the last.

    It counts earlier user turns in the context, so it keeps no state of its own and one
    instance can serve many sessions.
    """
    if not replies:
        raise ValueError("scripted_brain needs at least one reply")

    def brain(context: SessionContext, text: str) -> str:
        return replies[min(len(context.user_turns), len(replies) - 1)]

    return brain


async def ask_brain(brain: Brain, context: SessionContext, text: str) -> str:
    """Call a sync or async brain and insist on a string back."""
    answer = brain(context, text)
    if inspect.isawaitable(answer):
        answer = await answer
    if not isinstance(answer, str):
        raise TypeError(f"brain returned {type(answer).__name__}, expected str")
    return answer
