"""``AgentSession`` against the ElevenLabs stand-in, over real loopback sockets.

Rules (trio-websocket's): 127.0.0.1 and port 0 only, ``autojump_clock`` for every timer (a
30 s turn timeout passes in milliseconds), an absolute ``fail_after`` around every test
body (virtual seconds under the autojump clock, so a hang fails at once), no sleeps.
pytest-trio takes the clock only from a test's own arguments (``usefixtures`` leaves the
system clock in place), so every test names ``autojump_clock``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
import trio_websocket

from clients.elevenlabs.session import (
    AgentAnswer,
    AgentProtocolError,
    AgentRejected,
    AgentSession,
    AgentSessionClosed,
    AgentSessionConfig,
    AgentTurnTimeout,
    AgentUnavailable,
)
from sandbox.elevenlabs import (
    DEFAULT_AGENT_ID,
    AgentConfig,
    ClientToolScript,
    ElevenLabsStandIn,
    Faults,
    LiveSession,
    SessionContext,
    serve_elevenlabs,
)
from sandbox.elevenlabs._protocol import (
    agent_chat_response_part_event,
    agent_response_correction_event,
    agent_response_event,
)

PHONE = "+15551234567"
API_KEY = "sk_test_0123456789abcdef_secret"
TEXT_ONLY = frozenset({"conversation.text_only"})


@attrs.frozen
class World:
    standin: ElevenLabsStandIn
    http: httpx.AsyncClient
    nursery: trio.Nursery

    def config(self, **changes: Any) -> AgentSessionConfig:
        assert self.standin.base_url is not None
        defaults: dict[str, Any] = {
            "base_url": self.standin.base_url,
            "agent_id": DEFAULT_AGENT_ID,
            "api_key": None,
            "user_id": PHONE,
            "dynamic_variables": {"user_name": "Ana"},
        }
        return AgentSessionConfig(**{**defaults, **changes})

    async def open(self, **changes: Any) -> AgentSession:
        return await AgentSession.open(self.nursery, self.http, self.config(**changes))

    def live(self, session: AgentSession) -> LiveSession:
        return self.standin.session(session.conversation_id)


@asynccontextmanager
async def world(standin: ElevenLabsStandIn | None = None) -> AsyncIterator[World]:
    """The stand-in, an HTTP client, and a nursery playing the phone actor's. Leaving the
    block cancels the nursery, as an actor's end would: no session task outlives it."""
    async with (
        serve_elevenlabs(standin) as served,
        httpx.AsyncClient() as http,
        trio.open_nursery() as nursery,
    ):
        yield World(served, http, nursery)
        nursery.cancel_scope.cancel()


def private_standin() -> ElevenLabsStandIn:
    standin = ElevenLabsStandIn(api_key=API_KEY)
    standin.add_agent(
        AgentConfig(DEFAULT_AGENT_ID, allowed_overrides=TEXT_ONLY, requires_auth=True)
    )
    return standin


def with_agent(**changes: Any) -> ElevenLabsStandIn:
    standin = ElevenLabsStandIn()
    standin.add_agent(AgentConfig(DEFAULT_AGENT_ID, **{"allowed_overrides": TEXT_ONLY, **changes}))
    return standin


# --- a turn ----------------------------------------------------------------------------------


async def test_a_turn_in_text_mode(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with world() as w:
            session = await w.open()
            assert session.conversation_id.startswith("conv_")
            # The stand-in's agent greets first; the greeting is kept, never an answer.
            assert session.first_message == "Hello! How can I help you today?"

            answer = await session.ask("What is my name?")

            assert answer.text == "Your name is Ana."
            assert answer.event_id == 2
            assert answer.streamed_parts == 0
            assert not answer.corrected
            assert 0 <= answer.agent_seconds < 1
            live = w.live(session)
            assert live.received[0] == {
                "type": "conversation_initiation_client_data",
                "conversation_config_override": {"conversation": {"text_only": True}},
                "dynamic_variables": {"user_name": "Ana"},
                "user_id": PHONE,
            }
            assert live.received[1] == {"type": "user_message", "text": "What is my name?"}
            assert live.text_only
            assert live.conversation.user_id == PHONE
            stats = session.statistics()
            assert (stats.turns, stats.failed_turns, stats.last_agent_seconds) == (
                1,
                0,
                answer.agent_seconds,
            )
            await session.aclose()


async def test_turns_follow_each_other_in_one_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with world() as w:
            session = await w.open()
            assert (await session.ask("one")).text == "You said: one"
            assert (await session.ask("two")).text == "You said: two"
            assert (await session.ask("What did I say?")).text == "You said: one | two"
            assert session.statistics().turns == 3
            await session.aclose()


async def test_latency_is_measured_on_the_trio_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with world() as w:
            session = await w.open()
            w.standin.set_faults(Faults(reply_delay_seconds=7.5))
            answer = await session.ask("slow")
            assert answer.agent_seconds == pytest.approx(7.5, abs=0.1)
            await session.aclose()


async def test_streamed_parts_fold_into_the_answer(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with world(with_agent(stream_text_parts=True)) as w:
            session = await w.open(first_message_wait=0)
            answer = await session.ask("tell me three words")
            assert answer.text == "You said: tell me three words"
            assert answer.streamed_parts == 6  # one delta per word
            await session.aclose()


async def test_an_empty_answer_is_returned_as_empty_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with world() as w:
            session = await w.open()
            w.standin.set_faults(Faults(empty_answer=True), conversation_id=session.conversation_id)
            answer = await session.ask("anything")
            assert answer.text == ""
            assert not session.closed
            await session.aclose()


# --- corrections -----------------------------------------------------------------------------


async def test_a_correction_during_the_turn_replaces_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    standin = with_agent()

    async def correcting_brain(context: SessionContext, text: str) -> str:
        # Stream an answer, send the full response before the stop (as the official widget
        # mock does), then correct it before the stream ends.
        live = standin.session(context.conversation_id)
        event_id = live.next_event_id()
        await live.send(agent_chat_response_part_event("", "start", event_id))
        await live.send(agent_chat_response_part_event("Hello there", "delta", event_id))
        await live.send(agent_response_event("Hello there, friend", event_id))
        await live.send(
            agent_response_correction_event("Hello there, friend", "Hello there", event_id)
        )
        await live.send(agent_chat_response_part_event("", "stop", event_id))
        return "a later response under a new event id"

    standin.add_agent(
        AgentConfig(DEFAULT_AGENT_ID, allowed_overrides=TEXT_ONLY, brain=correcting_brain)
    )
    with trio.fail_after(30):
        async with world(standin) as w:
            session = await w.open(first_message_wait=0)
            answer = await session.ask("hi")
            assert answer == AgentAnswer(
                "Hello there", 1, answer.agent_seconds, streamed_parts=1, corrected=True
            )
            # What the agent said after the turn completed is not taken for a later answer.
            await trio.testing.wait_all_tasks_blocked()
            assert session.statistics().stale_frames == 1
            await session.aclose()


async def test_a_correction_after_the_answer_is_counted_not_applied(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with world() as w:
            session = await w.open()
            first = await session.ask("hello")
            await w.standin.correct_last_response(session.conversation_id, "You said: hel")
            await trio.testing.wait_all_tasks_blocked()
            assert session.statistics().late_corrections == 1
            assert first.text == "You said: hello"
            assert (await session.ask("next")).text == "You said: next"
            await session.aclose()


# --- frames that are not answers -------------------------------------------------------------


async def test_pings_are_answered_with_their_event_id_during_a_long_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with world() as w:
            session = await w.open()
            w.standin.set_faults(Faults(reply_delay_seconds=12))
            await session.ask("take your time")
            live = w.live(session)
            assert [event_id for event_id, _ in live.pongs] == [1, 2]
            assert live.unanswered_pings == []
            assert session.statistics().pings_answered == 2
            await session.aclose()


async def test_frames_not_for_text_mode_are_ignored_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    standin = with_agent()

    async def noisy_brain(context: SessionContext, text: str) -> str:
        live = standin.session(context.conversation_id)
        await live.send({"type": "vad_score", "vad_score_event": {"vad_score": 0.5}})
        await live.send({"type": "audio", "audio_event": {"audio_base_64": "", "event_id": 9}})
        await live.send({"user_audio_chunk": "AAAA"})
        await live.send({"type": "something_new", "payload": {}})
        return "still here"

    standin.add_agent(AgentConfig(DEFAULT_AGENT_ID, allowed_overrides=TEXT_ONLY, brain=noisy_brain))
    with trio.fail_after(30):
        async with world(standin) as w:
            session = await w.open(first_message_wait=0)
            assert (await session.ask("hi")).text == "still here"
            stats = session.statistics()
            assert (stats.ignored_frames, stats.untyped_frames) == (4, 1)
            await session.aclose()


async def test_a_client_tool_call_is_refused_and_the_agent_answers_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    standin = with_agent()

    async def tool_brain(context: SessionContext, text: str) -> str:
        # The official widget mock's order: the tool call comes inside the open stream.
        live = standin.session(context.conversation_id)
        event_id = live.next_event_id()
        await live.send(agent_chat_response_part_event("", "start", event_id))
        await live.send(agent_response_event("Let me check.", event_id))
        await live.send(tool_call_event("tc_1", event_id))
        await live.send(agent_chat_response_part_event("", "stop", event_id))
        return "I cannot open doors from WhatsApp."

    standin.add_agent(AgentConfig(DEFAULT_AGENT_ID, allowed_overrides=TEXT_ONLY, brain=tool_brain))
    with trio.fail_after(30):
        async with world(standin) as w:
            session = await w.open(first_message_wait=0)
            answer = await session.ask("open the door")
            assert answer.text == "Let me check.\n\nI cannot open doors from WhatsApp."
            assert answer.event_id == 2
            assert {
                "type": "client_tool_result",
                "tool_call_id": "tc_1",
                "result": "tool not available in WhatsApp relay",
                "is_error": True,
            } in w.live(session).received
            assert session.statistics().tool_calls_refused == 1
            await session.aclose()


async def test_without_streaming_a_response_before_a_tool_call_ends_the_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Without streamed parts nothing says more is coming after an agent_response: the turn
    # ends there, and what the agent says after the tool is counted as stale, never taken
    # for the answer to the next message.
    standin = with_agent()

    async def tool_brain(context: SessionContext, text: str) -> str:
        live = standin.session(context.conversation_id)
        if len(context.user_turns) > 0:
            return f"You said: {text}"
        event_id = live.next_event_id()
        await live.send(agent_response_event("Let me check.", event_id))
        await live.send(tool_call_event("tc_1", event_id))
        return "I cannot open doors from WhatsApp."

    standin.add_agent(AgentConfig(DEFAULT_AGENT_ID, allowed_overrides=TEXT_ONLY, brain=tool_brain))
    with trio.fail_after(30):
        async with world(standin) as w:
            session = await w.open(first_message_wait=0)
            assert (await session.ask("open the door")).text == "Let me check."
            await trio.testing.wait_all_tasks_blocked()
            assert session.statistics().tool_calls_refused == 1
            assert session.statistics().stale_frames == 1
            assert (await session.ask("ok")).text == "You said: ok"
            await session.aclose()


def tool_call_event(tool_call_id: str, event_id: int) -> dict[str, Any]:
    return {
        "type": "client_tool_call",
        "client_tool_call": {
            "tool_name": "open_door",
            "tool_call_id": tool_call_id,
            "parameters": {},
            "event_id": event_id,
        },
    }


# --- priming and keeping alive ---------------------------------------------------------------


async def test_context_sent_on_reopen_reaches_the_agent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with world() as w:
            session = await w.open()
            await session.send_context("Call summary: Ana wants to move her delivery to Friday.")
            await session.send_context("Ana prefers mornings.", context_id="preferences")
            await session.send_context("Ana prefers afternoons.", context_id="preferences")
            answer = await session.ask("What did we discuss?")
            assert answer.text == (
                "We discussed: Call summary: Ana wants to move her delivery to Friday. | "
                "Ana prefers afternoons."
            )
            assert session.statistics().context_updates_sent == 3
            await session.aclose()


async def test_keep_alive_sends_user_activity(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with world() as w:
            session = await w.open()
            await session.keep_alive()
            await session.ask("hi")
            assert w.live(session).user_activity_count == 1
            assert session.statistics().keep_alives_sent == 1
            await session.aclose()


async def test_blank_text_is_refused_before_it_reaches_the_wire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with world() as w:
            session = await w.open()
            with pytest.raises(ValueError, match="non-blank"):
                await session.ask("   ")
            with pytest.raises(ValueError, match="non-blank"):
                await session.send_context("")
            await session.aclose()


async def test_one_ask_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with world() as w:
            session = await w.open()
            w.standin.set_faults(Faults(reply_delay_seconds=5))
            answers: list[AgentAnswer] = []

            async def first() -> None:
                answers.append(await session.ask("first"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(trio.BusyResourceError):
                    await session.ask("second")
            assert [answer.text for answer in answers] == ["You said: first"]
            await session.aclose()


# --- timeouts and closes ---------------------------------------------------------------------


async def test_no_answer_times_out_and_closes_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with world() as w:
            session = await w.open(turn_timeout=30)
            w.standin.set_faults(Faults(no_answer=True), conversation_id=session.conversation_id)
            started = trio.current_time()
            with pytest.raises(AgentTurnTimeout) as timeout:
                await session.ask("hello?")
            assert trio.current_time() - started == pytest.approx(30, abs=0.5)
            assert timeout.value.retryable
            assert "sent nothing" in str(timeout.value)
            assert timeout.value.partial_text == ""
            # A late answer must never become the answer to the next message: closed.
            assert session.closed
            assert session.close_info == (1000, "User ended conversation")
            await trio.testing.wait_all_tasks_blocked()
            assert w.live(session).closed_by == "client"
            assert session.statistics().failed_turns == 1
            with pytest.raises(AgentSessionClosed):
                await session.ask("again")


async def test_a_cancelled_ask_closes_the_session(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with world() as w:
            session = await w.open()
            w.standin.set_faults(Faults(no_answer=True))
            with trio.move_on_after(3):
                await session.ask("hello?")
            assert session.closed


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_close_mid_turn_1011_then_reopen_works(
    stream: bool, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with world(with_agent(stream_text_parts=stream)) as w:
            session = await w.open(first_message_wait=0)
            w.standin.set_faults(
                Faults(close_mid_turn=1011), conversation_id=session.conversation_id
            )
            with pytest.raises(AgentSessionClosed) as closed:
                await session.ask("hello")
            assert closed.value.retryable
            assert closed.value.code == 1011
            assert "failed internally" in str(closed.value)
            assert session.closed
            assert session.close_info == (1011, "Connection closed mid-turn (sandbox fault)")
            assert session.statistics().close_code == 1011

            reopened = await w.open(first_message_wait=0)
            await reopened.send_context("We were saying hello.")
            assert (await reopened.ask("hello again")).text == "You said: hello again"
            await reopened.aclose()


async def test_max_duration_mid_turn_is_explained_and_retryable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with world(with_agent(max_duration_seconds=10)) as w:
            session = await w.open(first_message_wait=0)
            w.standin.set_faults(Faults(reply_delay_seconds=20))
            with pytest.raises(AgentSessionClosed) as closed:
                await session.ask("hello")
            assert closed.value.retryable
            assert closed.value.code == 1000
            assert closed.value.error_type == "max_duration_exceeded"
            assert "maximum duration" in str(closed.value)


async def test_1008_override_error_is_final_and_names_the_security_tab(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with world(with_agent(allowed_overrides=frozenset())) as w:
            with pytest.raises(AgentSessionClosed) as closed:
                await w.open()
            assert not closed.value.retryable
            assert closed.value.code == 1008
            assert closed.value.error_type == "override_error"
            assert "enable the text_only override in the agent's Security tab" in str(closed.value)


async def test_1008_missing_dynamic_variable_is_final_and_names_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with world(with_agent(required_dynamic_variables={"call_summary"})) as w:
            with pytest.raises(AgentSessionClosed) as closed:
                await w.open()
            assert not closed.value.retryable
            assert closed.value.code == 1008
            assert closed.value.missing_variables == ("call_summary",)
            assert "(call_summary)" in closed.value.reason
            assert "dynamic_variables" in closed.value.reason

            session = await w.open(
                dynamic_variables={"user_name": "Ana", "call_summary": "Delivery moved."}
            )
            assert (await session.ask("What did we discuss?")).text == (
                "We discussed: Delivery moved."
            )
            await session.aclose()


async def test_1008_after_an_open_that_does_not_wait_is_final_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Without the first-message wait the 1008 that follows the metadata may be seen by
    # open or by the first ask: either way it is final and explained.
    with trio.fail_after(30):
        async with world(with_agent(allowed_overrides=frozenset())) as w:

            async def open_then_ask() -> None:
                session = await w.open(first_message_wait=0)
                await trio.testing.wait_all_tasks_blocked()
                await session.ask("hello")

            with pytest.raises(AgentSessionClosed) as closed:
                await open_then_ask()
            assert not closed.value.retryable
            assert "Security tab" in str(closed.value)


async def test_an_ask_in_flight_ends_promptly_with_its_owner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin, httpx.AsyncClient() as http:
            assert standin.base_url is not None
            standin.set_faults(Faults(no_answer=True))
            config = AgentSessionConfig(standin.base_url, DEFAULT_AGENT_ID, None, PHONE, {})
            async with trio.open_nursery() as actor:
                session = await AgentSession.open(actor, http, config)

                async def relay() -> None:
                    await session.ask("hello?")

                actor.start_soon(relay)
                await trio.testing.wait_all_tasks_blocked()
                cancelled_at = trio.current_time()
                actor.cancel_scope.cancel()
            assert trio.current_time() - cancelled_at < 0.1
            assert session.closed
            # Whichever ran first: the ask's own close, or the end of the session's task.
            assert session.close_info in {(1000, "User ended conversation"), (None, None)}
            await trio.testing.wait_all_tasks_blocked()
            assert standin.session(session.conversation_id).closed_by == "client"


async def test_aclose_ends_the_session_normally(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with world() as w:
            session = await w.open()
            await session.aclose()
            assert session.closed
            assert session.close_info == (1000, "User ended conversation")
            await trio.testing.wait_all_tasks_blocked()
            assert w.live(session).closed_by == "client"
            await session.aclose()  # idempotent
            with pytest.raises(AgentSessionClosed):
                await session.keep_alive()


async def test_the_session_task_ends_with_its_owner(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin, httpx.AsyncClient() as http:
            assert standin.base_url is not None
            config = AgentSessionConfig(standin.base_url, DEFAULT_AGENT_ID, None, PHONE, {})
            async with trio.open_nursery() as actor:
                session = await AgentSession.open(actor, http, config)
                actor.cancel_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert standin.session(session.conversation_id).closed_by == "client"


# --- private agents and refusals -------------------------------------------------------------


async def test_a_private_agent_is_reached_through_a_signed_url(
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(30):
        async with world(private_standin()) as w:
            session = await w.open(api_key=API_KEY, first_message_wait=0)
            live = w.live(session)
            assert live.query["conversation_signature"].startswith("cvtkn_")
            assert w.standin.conversations[session.conversation_id].authorization_method == (
                "signed_url"
            )
            assert (await session.ask("hi")).text == "You said: hi"
            await session.aclose()
    assert API_KEY not in caplog.text
    assert live.query["conversation_signature"] not in caplog.text


async def test_a_private_agent_without_a_key_is_closed_1008(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with world(private_standin()) as w:
            with pytest.raises(AgentSessionClosed) as closed:
                await w.open()
            assert closed.value.code == 1008
            assert not closed.value.retryable


async def test_a_wrong_api_key_is_rejected_without_showing_the_key(
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = "sk_wrong_key_that_must_stay_secret"
    with trio.fail_after(30):
        async with world(private_standin()) as w:
            with pytest.raises(AgentRejected) as rejected:
                await w.open(api_key=wrong_key)
    assert rejected.value.code == 401
    assert not rejected.value.retryable
    assert "API key" in str(rejected.value)
    assert wrong_key not in str(rejected.value)
    assert wrong_key not in repr(rejected.value.args)
    assert wrong_key not in caplog.text


@pytest.mark.parametrize("status", [429, 503])
async def test_busy_signed_url_endpoint_is_retryable(
    status: int, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with world(private_standin()) as w:
            w.standin.set_faults(Faults(refuse_status=status, refuse_count=1))
            with pytest.raises(AgentUnavailable) as unavailable:
                await w.open(api_key=API_KEY)
            assert unavailable.value.retryable
            assert unavailable.value.code == status
            assert f"HTTP {status}" in str(unavailable.value)
            assert API_KEY not in str(unavailable.value)

            session = await w.open(api_key=API_KEY)
            assert (await session.ask("hi")).text == "You said: hi"
            await session.aclose()


@pytest.mark.parametrize("status", [429, 503])
async def test_refused_handshake_is_retryable_and_leaves_the_owner_running(
    status: int, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with world() as w:
            w.standin.queue_connection_faults(Faults(refuse_status=status))
            with pytest.raises(AgentUnavailable) as unavailable:
                await w.open()
            assert unavailable.value.retryable
            assert unavailable.value.code == status
            assert "handshake" in str(unavailable.value)
            # The refusal did not reach the owner's nursery: the next open works.
            session = await w.open()
            assert (await session.ask("hi")).text == "You said: hi"
            await session.aclose()


async def test_nothing_listening_is_retryable(autojump_clock: trio.testing.MockClock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(30):
        async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
            config = AgentSessionConfig(f"http://127.0.0.1:{port}", "agent_x", None, PHONE, {})
            with pytest.raises(AgentUnavailable) as unavailable:
                await AgentSession.open(nursery, http, config)
            assert unavailable.value.retryable
            with pytest.raises(AgentUnavailable):
                await AgentSession.open(nursery, http, attrs.evolve(config, api_key=API_KEY))


# --- a server that breaks the protocol -------------------------------------------------------


@asynccontextmanager
async def raw_server(first_frames: list[str]) -> AsyncIterator[str]:
    """A WebSocket server that reads the initiation and sends ``first_frames``."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.get_message()
            for frame in first_frames:
                await ws.send_message(frame)
            await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        yield f"http://127.0.0.1:{server.port}"
        nursery.cancel_scope.cancel()


async def test_a_first_frame_that_is_not_metadata_is_a_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ping = '{"type": "ping", "ping_event": {"event_id": 1, "ping_ms": null}}'
    with trio.fail_after(30):
        async with (
            raw_server([ping]) as base_url,
            httpx.AsyncClient() as http,
            trio.open_nursery() as nursery,
        ):
            config = AgentSessionConfig(base_url, "agent_x", None, PHONE, {})
            with pytest.raises(AgentProtocolError) as broken:
                await AgentSession.open(nursery, http, config)
    assert not broken.value.retryable
    assert "'ping'" in str(broken.value)
    assert "conversation_initiation_metadata" in str(broken.value)


async def test_no_metadata_in_time_is_unavailable(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with (
            raw_server([]) as base_url,
            httpx.AsyncClient() as http,
            trio.open_nursery() as nursery,
        ):
            config = AgentSessionConfig(base_url, "agent_x", None, PHONE, {}, connect_timeout=5)
            with pytest.raises(AgentUnavailable, match="did not open within 5 s"):
                await AgentSession.open(nursery, http, config)


# --- client tools this session answers -------------------------------------------------------


async def test_a_client_tool_the_session_handles_is_answered_and_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    standin = with_agent(
        client_tools=(
            ClientToolScript(
                "a person", "handoff_to_human", {"reason": "wants a person"}, say_after="Sure."
            ),
        )
    )
    with trio.fail_after(30):
        async with world(standin) as w:
            session = await w.open(first_message_wait=0, client_tools={"handoff_to_human": "ok"})
            answer = await session.ask("let me talk to a person")
            live = w.live(session)
            [call] = live.tool_calls
            assert answer.text == "Sure."
            assert answer.complete
            assert [
                (c.tool_name, c.tool_call_id, dict(c.parameters)) for c in answer.tool_calls
            ] == [("handoff_to_human", call["tool_call_id"], {"reason": "wants a person"})]
            assert live.tool_results[call["tool_call_id"]] == {
                "type": "client_tool_result",
                "tool_call_id": call["tool_call_id"],
                "result": "ok",
                "is_error": False,
            }
            assert session.statistics().tool_calls_answered == 1
            assert not session.closed  # a finished turn keeps the session
            await session.aclose()


async def test_after_a_tool_call_and_no_words_the_turn_ends_and_the_session_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    standin = with_agent(client_tools=(ClientToolScript("manager", "handoff_to_human"),))
    with trio.fail_after(30):
        async with world(standin) as w:
            session = await w.open(
                first_message_wait=0,
                client_tools={"handoff_to_human": "ok"},
                after_tool_wait=3,
                turn_timeout=30,
            )
            started = trio.current_time()
            answer = await session.ask("your manager, now")
            assert trio.current_time() - started == pytest.approx(3, abs=0.5)
            assert (answer.text, answer.complete, len(answer.tool_calls)) == ("", False, 1)
            # A late answer must never be taken for the next question's.
            assert session.closed


async def test_a_tool_call_after_the_turn_ended_is_handed_to_the_owner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    standin = with_agent(
        client_tools=(ClientToolScript("a person", "handoff_to_human", say_before="One moment."),)
    )
    late: list[str] = []
    with trio.fail_after(30):
        async with world(standin) as w:
            session = await w.open(
                first_message_wait=0,
                client_tools={"handoff_to_human": "ok"},
                on_tool_call_between_turns=lambda call: late.append(call.tool_name),
            )
            answer = await session.ask("a person please")
            # Unstreamed words end the turn: the tool call comes after it.
            assert (answer.text, answer.tool_calls) == ("One moment.", ())
            await trio.testing.wait_all_tasks_blocked()
            assert late == ["handoff_to_human"]
            [call] = w.live(session).tool_calls
            assert w.live(session).tool_results[call["tool_call_id"]]["is_error"] is False
            await session.aclose()
