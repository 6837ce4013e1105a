"""The agent WebSocket of the ElevenLabs stand-in, over real loopback sockets.

Rules (from trio-websocket's own suite): 127.0.0.1 and port 0 only, ``autojump_clock`` for
every timer, an absolute ``fail_after`` around every test body, and the side under test
closes. Under the autojump clock ``fail_after`` counts virtual seconds, so a hang fails at
once instead of after a real timeout.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from sandbox.elevenlabs import (
    AgentConfig,
    ConversationRecord,
    ElevenLabsStandIn,
    Faults,
    SessionContext,
    scripted_brain,
    serve_elevenlabs,
)

TEXT_ONLY_INIT: dict[str, Any] = {
    "type": "conversation_initiation_client_data",
    "conversation_config_override": {"conversation": {"text_only": True}},
    "custom_llm_extra_body": {},
    "dynamic_variables": {},
    "source_info": {"source": "python_sdk", "version": "test"},
}


@asynccontextmanager
async def open_ws(
    url: str, subprotocols: list[str] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """``open_websocket_url`` that never leaks its socket.

    trio-websocket 0.12.2's client leaves its TCP stream open when the server closes first
    (its reader stops on EOF without closing the stream, and ``aclose()`` returns early
    once a close reason is known): close it here, or the ResourceWarning fails the suite.
    """
    async with open_websocket_url(url, subprotocols=subprotocols) as ws:
        try:
            yield ws
        finally:
            stream = ws._stream
    await stream.aclose()


async def refused_handshake(url: str) -> ConnectionRejected:
    """The rejection a trio-websocket client gets; the TCP stream is ours, so it is closed
    (the library's own connect path leaks it on rejection too)."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname is not None
    assert parsed.port is not None
    stream = await trio.open_tcp_stream(parsed.hostname, parsed.port)
    rejected: list[ConnectionRejected] = []
    try:
        async with trio.open_nursery() as nursery:
            await wrap_client_stream(
                nursery, stream, parsed.netloc, f"{parsed.path}?{parsed.query}"
            )
            nursery.cancel_scope.cancel()
    except* ConnectionRejected as group:
        rejected.extend(e for e in group.exceptions if isinstance(e, ConnectionRejected))
    finally:
        await stream.aclose()
    assert rejected, "the handshake was accepted"
    return rejected[0]


def init_with(**changes: Any) -> dict[str, Any]:
    return {**TEXT_ONLY_INIT, **changes}


def ws_url(standin: ElevenLabsStandIn, query: str = "agent_id=agent_sandbox") -> str:
    assert standin.base_url is not None
    return standin.base_url.replace("http://", "ws://") + "/v1/convai/conversation?" + query


async def send(ws: WebSocketConnection, event: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(event))


async def next_event(ws: WebSocketConnection, *, answer_pings: bool = True) -> dict[str, Any]:
    """The next non-ping event; pings are answered (like the SDKs do) unless told not to."""
    while True:
        event: dict[str, Any] = json.loads(await ws.get_message())
        if event["type"] != "ping":
            return event
        if answer_pings:
            await send(ws, {"type": "pong", "event_id": event["ping_event"]["event_id"]})


async def closed_with(
    ws: WebSocketConnection, *, answer_pings: bool = True
) -> tuple[int, list[Any]]:
    """Read until the server closes; the close code and the events seen on the way."""
    seen: list[Any] = []
    try:
        while True:
            seen.append(await next_event(ws, answer_pings=answer_pings))
    except ConnectionClosed as closed:
        reason = closed.reason
    if reason is None:
        raise AssertionError("closed without a code")
    return reason.code, seen


@asynccontextmanager
async def session(
    standin: ElevenLabsStandIn,
    init: dict[str, Any] | None = TEXT_ONLY_INIT,
    query: str = "agent_id=agent_sandbox",
) -> AsyncIterator[tuple[WebSocketConnection, str]]:
    """A connected session past its metadata frame: yields the socket and conversation id."""
    async with open_ws(ws_url(standin, query)) as ws:
        if init is not None:
            await send(ws, init)
        metadata = json.loads(await ws.get_message())
        assert metadata["type"] == "conversation_initiation_metadata"
        yield ws, metadata["conversation_initiation_metadata_event"]["conversation_id"]


def status_of(record: ConversationRecord) -> str:
    """The record's status now: ``advance`` changes it after an assert has narrowed it."""
    return record.status


async def ask(ws: WebSocketConnection, text: str) -> dict[str, Any]:
    await send(ws, {"type": "user_message", "text": text})
    return await next_event(ws)


# --- opening a session -------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        {"conversation": {"text_only": True}},  # documented placement
        {"text_only": True},  # the Python SDK's top-level placement
    ],
    ids=["nested", "top-level"],
)
async def test_metadata_first_then_first_message_in_both_text_only_placements(
    autojump_clock: trio.testing.MockClock, override: dict[str, Any]
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            init = init_with(conversation_config_override=override)
            async with open_ws(ws_url(standin)) as ws:
                await send(ws, init)
                first = json.loads(await ws.get_message())
                assert first["type"] == "conversation_initiation_metadata"
                body = first["conversation_initiation_metadata_event"]
                assert body["conversation_id"].startswith("conv_")
                assert body["agent_output_audio_format"] == "pcm_16000"
                assert body["user_input_audio_format"] == "pcm_16000"
                greeting = await next_event(ws)
                assert greeting == {
                    "type": "agent_response",
                    "agent_response_event": {
                        "agent_response": "Hello! How can I help you today?",
                        "event_id": 1,
                    },
                }
                live = standin.session(body["conversation_id"])
                assert live.text_only is True
                assert live.received == [init]


async def test_metadata_comes_first_even_when_the_client_sends_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin, session(standin, init=None) as (ws, _):
            assert (await next_event(ws))["type"] == "agent_response"


async def test_first_message_override_fills_dynamic_variables(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            standin.add_agent(
                AgentConfig(
                    "agent_greeter",
                    first_message="Hi {{user_name}}",
                    allowed_overrides={"conversation.text_only", "agent.first_message"},
                )
            )
            init = init_with(
                conversation_config_override={
                    "conversation": {"text_only": True},
                    "agent": {"first_message": "Welcome back, {{user_name}}!"},
                },
                dynamic_variables={"user_name": "Ada"},
            )
            async with session(standin, init, "agent_id=agent_greeter") as (ws, _):
                event = await next_event(ws)
                assert event["agent_response_event"]["agent_response"] == "Welcome back, Ada!"


# --- turns and the brain ------------------------------------------------------------------


async def test_brain_quotes_the_call_summary_and_contextual_updates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            init = init_with(dynamic_variables={"call_summary": "Ada wants the invoice resent."})
            async with session(standin, init) as (ws, conversation_id):
                await next_event(ws)  # first message
                await send(
                    ws,
                    {
                        "type": "contextual_update",
                        "text": "Paid on Monday",
                        "context_id": "payment",
                    },
                )
                await send(
                    ws,
                    {
                        "type": "contextual_update",
                        "text": "Paid on Tuesday",
                        "context_id": "payment",
                    },
                )
                await send(ws, {"type": "contextual_update", "text": "Prefers email"})
                answer = await ask(ws, "What did we discuss?")
                assert answer["type"] == "agent_response"
                assert answer["agent_response_event"] == {
                    "agent_response": "We discussed: Ada wants the invoice resent. | "
                    "Paid on Tuesday | Prefers email",
                    "event_id": 2,
                }
                follow_up = await ask(ws, "What did I say?")
                assert follow_up["agent_response_event"]["agent_response"] == (
                    "You said: What did we discuss?"
                )
            live = standin.session(conversation_id)
            assert [t.role for t in live.turns] == ["agent", "user", "agent", "user", "agent"]


async def test_without_context_the_brain_says_it_has_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin, session(standin) as (ws, _):
            await next_event(ws)
            answer = await ask(ws, "Can you summarize our last call?")
            assert answer["agent_response_event"]["agent_response"] == (
                "I have no record of an earlier conversation."
            )


async def test_scripted_sync_and_async_brains(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[SessionContext] = []

    async def async_brain(context: SessionContext, text: str) -> str:
        seen.append(context)
        await trio.lowlevel.checkpoint()
        return f"{context.dynamic_variables['order']}: {text.upper()}"

    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            standin.add_agent(
                AgentConfig(
                    "agent_script",
                    brain=scripted_brain("one", "two"),
                    allowed_overrides={"conversation.text_only"},
                )
            )
            standin.add_agent(
                AgentConfig(
                    "agent_async",
                    brain=async_brain,
                    allowed_overrides={"conversation.text_only"},
                    required_dynamic_variables={"order"},
                )
            )
            async with session(standin, query="agent_id=agent_script") as (ws, _):
                answers = [
                    (await ask(ws, q))["agent_response_event"]["agent_response"]
                    for q in ("a", "b", "c")
                ]
                assert answers == ["one", "two", "two"]
            init = init_with(dynamic_variables={"order": "A-17"})
            async with session(standin, init, "agent_id=agent_async") as (ws, conv_id):
                answer = await ask(ws, "where is it")
                assert answer["agent_response_event"]["agent_response"] == "A-17: WHERE IS IT"
            assert seen[0].conversation_id == conv_id
            assert seen[0].turns == ()


async def test_streamed_parts_share_the_event_id_of_the_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            standin.add_agent(
                AgentConfig(
                    "agent_stream",
                    stream_text_parts=True,
                    allowed_overrides={"conversation.text_only"},
                    brain=scripted_brain("Two words"),
                )
            )
            async with session(standin, query="agent_id=agent_stream") as (ws, _):
                await send(ws, {"type": "user_message", "text": "hi"})
                events = [await next_event(ws) for _ in range(5)]
                parts = [e["text_response_part"] for e in events[:4]]
                assert [p["type"] for p in parts] == ["start", "delta", "delta", "stop"]
                assert "".join(p["text"] for p in parts) == "Two words"
                assert {p["event_id"] for p in parts} == {1}
                assert events[4] == {
                    "type": "agent_response",
                    "agent_response_event": {"agent_response": "Two words", "event_id": 1},
                }


async def test_agent_response_correction_rewrites_the_last_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin, session(standin) as (ws, conv_id):
            await next_event(ws)
            await ask(ws, "hello")
            await standin.correct_last_response(conv_id, "You said: hel")
            event = await next_event(ws)
            assert event == {
                "type": "agent_response_correction",
                "agent_response_correction_event": {
                    "original_agent_response": "You said: hello",
                    "corrected_agent_response": "You said: hel",
                    "event_id": 2,
                },
            }
            assert standin.conversations[conv_id].transcript[-1].message == "You said: hel"


async def test_a_failing_brain_is_an_llm_error_1002(autojump_clock: trio.testing.MockClock) -> None:
    def broken(context: SessionContext, text: str) -> str:
        raise RuntimeError("model offline")

    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            standin.add_agent(
                AgentConfig(
                    "agent_broken", brain=broken, allowed_overrides={"conversation.text_only"}
                )
            )
            async with session(standin, query="agent_id=agent_broken") as (ws, conv_id):
                await send(ws, {"type": "user_message", "text": "hi"})
                code, seen = await closed_with(ws)
            assert code == 1002
            assert seen[-1]["error_event"]["error_type"] == "llm_error"
            assert standin.session(conv_id).brain_error == "RuntimeError: model offline"


# --- pings, idle, max duration ----------------------------------------------------------------


async def test_pings_carry_ping_ms_and_pongs_are_measured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with serve_elevenlabs() as standin, session(standin) as (ws, conv_id):
            await next_event(ws)
            pings: list[dict[str, Any]] = []
            while len(pings) < 3:
                event = json.loads(await ws.get_message())
                assert event["type"] == "ping"
                pings.append(event["ping_event"])
                if len(pings) != 2:  # leave the second one unanswered
                    await send(ws, {"type": "pong", "event_id": event["ping_event"]["event_id"]})
            assert [p["event_id"] for p in pings] == [1, 2, 3]
            assert pings[0]["ping_ms"] is None
            assert "ping_ms" in pings[1]
            assert isinstance(pings[1]["ping_ms"], int)
            await trio.testing.wait_all_tasks_blocked()
            live = standin.session(conv_id)
            assert [event_id for event_id, _ in live.pongs] == [1, 3]
            assert live.unanswered_pings == [2]


async def test_idle_session_gets_transport_receive_timeout_and_1002(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(120):
        async with serve_elevenlabs() as standin, session(standin) as (ws, conv_id):
            started = trio.current_time()
            code, seen = await closed_with(ws)  # answers every ping: pongs are not input
            assert code == 1002
            assert seen[-1] == {
                "type": "error",
                "error_event": {
                    "code": 1002,
                    "message": "No user input for 60 seconds",
                    "error_type": "transport_receive_timeout",
                    "reason": "No user input for 60 seconds",
                    "debug_message": None,
                    "details": None,
                },
            }
            # Idle counts from the agent's first message, sent right after metadata.
            assert trio.current_time() - started == pytest.approx(60, abs=0.5)
            assert standin.session(conv_id).closed_by == "server"


async def test_user_activity_postpones_the_idle_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(200):
        async with serve_elevenlabs() as standin, session(standin) as (ws, _):
            started = trio.current_time()
            await trio.sleep(50)
            await send(ws, {"type": "user_activity"})
            code, _ = await closed_with(ws)
            assert code == 1002
            assert trio.current_time() - started == pytest.approx(110, abs=1)


async def test_max_duration_sends_the_error_and_closes_1000(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(700):
        async with serve_elevenlabs() as standin:
            standin.add_agent(
                AgentConfig(
                    "agent_long",
                    idle_timeout_seconds=None,
                    allowed_overrides={"conversation.text_only"},
                )
            )
            async with session(standin, query="agent_id=agent_long") as (ws, _):
                started = trio.current_time()
                code, seen = await closed_with(ws)
                assert code == 1000
                assert seen[-1]["error_event"]["error_type"] == "max_duration_exceeded"
                assert seen[-1]["error_event"]["code"] == 1000
                assert seen[-1]["error_event"]["message"] == "Maximum duration exceeded"
                assert trio.current_time() - started == pytest.approx(600, abs=1.5)


async def test_max_duration_override_when_allowed(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with serve_elevenlabs() as standin:
            standin.add_agent(
                AgentConfig(
                    "agent_short",
                    idle_timeout_seconds=None,
                    allowed_overrides={
                        "conversation.text_only",
                        "conversation.max_duration_seconds",
                    },
                )
            )
            init = init_with(
                conversation_config_override={
                    "conversation": {"text_only": True, "max_duration_seconds": 20}
                }
            )
            async with session(standin, init, "agent_id=agent_short") as (ws, _):
                started = trio.current_time()
                code, _ = await closed_with(ws)
                assert code == 1000
                assert trio.current_time() - started == pytest.approx(20, abs=1.5)


# --- 1008: initiation and malformed frames -------------------------------------------------


FORBIDDEN = "Override for field(s) agent.prompt.prompt is not allowed by config."


async def test_forbidden_override_is_override_error_1008_after_metadata(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            init = init_with(
                conversation_config_override={
                    "conversation": {"text_only": True},
                    "agent": {"prompt": {"prompt": "Be rude"}},
                }
            )
            async with session(standin, init) as (ws, _):
                code, seen = await closed_with(ws)
            assert code == 1008
            assert seen == [
                {
                    "type": "error",
                    "error_event": {
                        "code": 1008,
                        "message": FORBIDDEN,
                        "error_type": "override_error",
                        "reason": FORBIDDEN,
                        "debug_message": None,
                        "details": None,
                    },
                }
            ]


async def test_text_only_needs_its_permission_in_either_placement(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            standin.add_agent(AgentConfig("agent_voice"))
            for override in ({"text_only": True}, {"conversation": {"text_only": True}}):
                init = init_with(conversation_config_override=override)
                async with session(standin, init, "agent_id=agent_voice") as (ws, _):
                    code, seen = await closed_with(ws)
                assert code == 1008
                assert seen[-1]["error_event"]["error_type"] == "override_error"


async def test_missing_required_dynamic_variable_is_1008(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            standin.add_agent(
                AgentConfig(
                    "agent_vars",
                    allowed_overrides={"conversation.text_only"},
                    required_dynamic_variables={"call_summary", "user_name"},
                )
            )
            init = init_with(dynamic_variables={"user_name": "Ada"})
            async with session(standin, init, "agent_id=agent_vars") as (ws, _):
                code, seen = await closed_with(ws)
            assert code == 1008
            assert seen[-1]["error_event"]["error_type"] == "missing_dynamic_variable"
            assert "call_summary" in seen[-1]["error_event"]["message"]


@pytest.mark.parametrize(
    ("frame", "error_type"),
    [
        ("this is not json", "invalid_message"),
        ("[1, 2, 3]", "invalid_message"),
        ('" "', "invalid_message"),
        ('{"type": "ping"}', "invalid_message"),  # the keep-alive the real server rejects
        ('{"type": "no_such_type"}', "invalid_message"),
        ('{"text": "no type"}', "invalid_message"),
        ('{"type": "contextual_update"}', "missing_fields"),
        ('{"type": "pong"}', "missing_fields"),
        ('{"type": "client_tool_result", "tool_call_id": "t1"}', "missing_fields"),
        ('{"type": "pong", "event_id": "1"}', "invalid_message"),
        (b"\x00\x01", "invalid_message"),
    ],
)
async def test_malformed_frames_close_1008(
    autojump_clock: trio.testing.MockClock, frame: str | bytes, error_type: str
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin, session(standin) as (ws, conv_id):
            await next_event(ws)
            await ws.send_message(frame)
            code, seen = await closed_with(ws)
            assert code == 1008
            assert seen[-1]["error_event"]["error_type"] == error_type
            assert seen[-1]["error_event"]["code"] == 1008
            assert standin.session(conv_id).close_code == 1008


async def test_a_malformed_first_frame_still_gets_metadata_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin, open_ws(ws_url(standin)) as ws:
            await ws.send_message("{oops")
            assert json.loads(await ws.get_message())["type"] == "conversation_initiation_metadata"
            code, seen = await closed_with(ws)
            assert (code, seen[-1]["error_event"]["error_type"]) == (1008, "invalid_message")


async def test_unknown_agent_is_1008_without_a_conversation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with (
            serve_elevenlabs() as standin,
            open_ws(ws_url(standin, "agent_id=agent_nobody")) as ws,
        ):
            code, seen = await closed_with(ws)
            assert code == 1008
            assert seen[0]["error_event"]["error_type"] == "value_error"
            assert standin.sessions == {}


async def test_audio_tool_results_feedback_and_unknown_query_params_are_accepted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with (
            serve_elevenlabs() as standin,
            session(
                standin, query="agent_id=agent_sandbox&source=js_sdk&version=9&environment=x"
            ) as (ws, conv_id),
        ):
            await next_event(ws)
            frames: list[dict[str, Any]] = [
                {"user_audio_chunk": "AAAA"},
                {"type": "feedback", "event_id": 1, "score": "like"},
                {
                    "type": "client_tool_result",
                    "tool_call_id": "t",
                    "result": "ok",
                    "is_error": False,
                },
                {"type": "mcp_tool_approval_result", "tool_call_id": "t", "is_approved": True},
            ]
            for frame in frames:
                await send(ws, frame)
            answer = await ask(ws, "still there?")
            assert answer["agent_response_event"]["agent_response"] == "You said: still there?"
            assert standin.session(conv_id).received[1:5] == frames


# --- faults ---------------------------------------------------------------------------------


async def test_reply_delay_keeps_pings_flowing(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with serve_elevenlabs() as standin:
            standin.set_faults(Faults(reply_delay_seconds=12), agent_id="agent_sandbox")
            async with session(standin) as (ws, conv_id):
                await next_event(ws)
                asked = trio.current_time()
                answer = await ask(ws, "slow?")
                assert answer["type"] == "agent_response"
                assert trio.current_time() - asked == pytest.approx(12, abs=0.5)
                assert len(standin.session(conv_id).pongs) == 2


async def test_no_answer_and_empty_answer(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with serve_elevenlabs() as standin, session(standin) as (ws, conv_id):
            await next_event(ws)
            standin.set_faults(Faults(no_answer=True), conversation_id=conv_id)
            await send(ws, {"type": "user_message", "text": "anyone?"})
            event = json.loads(await ws.get_message())
            assert event["type"] == "ping"  # five seconds pass with no answer
            await send(ws, {"type": "pong", "event_id": event["ping_event"]["event_id"]})
            standin.set_faults(Faults(empty_answer=True), conversation_id=conv_id)
            answer = await ask(ws, "hello?")
            assert answer["agent_response_event"]["agent_response"] == ""


@pytest.mark.parametrize("code", [1002, 1011])
async def test_close_mid_turn_with_a_chosen_code(
    autojump_clock: trio.testing.MockClock, code: int
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            standin.add_agent(
                AgentConfig(
                    "agent_stream",
                    stream_text_parts=True,
                    allowed_overrides={"conversation.text_only"},
                )
            )
            standin.set_faults(Faults(close_mid_turn=code), agent_id="agent_stream")
            async with session(standin, query="agent_id=agent_stream") as (ws, conv_id):
                await send(ws, {"type": "user_message", "text": "hi"})
                got, seen = await closed_with(ws)
            assert got == code
            assert [e["text_response_part"]["type"] for e in seen] == ["start"]
            assert standin.session(conv_id).closed_by == "server"


@pytest.mark.parametrize("status", [429, 503])
async def test_refused_handshakes_then_accepted(
    autojump_clock: trio.testing.MockClock, status: int
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            standin.set_faults(Faults(refuse_status=status, refuse_count=2))
            for _ in range(2):
                rejected = await refused_handshake(ws_url(standin))
                assert rejected.status_code == status
                assert rejected.body is not None
                assert json.loads(rejected.body)["detail"]["status"]
            async with session(standin) as (ws, _):
                assert (await next_event(ws))["type"] == "agent_response"
            assert standin.faults == Faults()


async def test_faults_queued_per_connection(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            standin.queue_connection_faults(Faults(refuse_status=503), Faults(empty_answer=True))
            assert (await refused_handshake(ws_url(standin))).status_code == 503
            async with session(standin) as (ws, _):
                await next_event(ws)
                assert (await ask(ws, "x"))["agent_response_event"]["agent_response"] == ""
            async with session(standin) as (ws, _):
                await next_event(ws)
                assert (await ask(ws, "x"))["agent_response_event"]["agent_response"] == (
                    "You said: x"
                )


# --- signed URLs ---------------------------------------------------------------------------


async def test_private_agent_needs_a_valid_signature(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(1000):
        async with serve_elevenlabs() as standin:
            standin.add_agent(
                AgentConfig(
                    "agent_private",
                    requires_auth=True,
                    allowed_overrides={"conversation.text_only"},
                )
            )
            async with open_ws(ws_url(standin, "agent_id=agent_private")) as ws:
                code, seen = await closed_with(ws)
                assert code == 1008
                assert seen[0]["error_event"]["error_type"] == "value_error"
            base = standin.base_url
            assert base is not None
            url = standin.signed_url(
                "agent_private", base.replace("http", "ws"), include_conversation_id=False
            )
            query = url.split("?", 1)[1]
            assert "conversation_signature=cvtkn_" in query
            async with session(standin, query=query) as (ws, conv_id):
                assert (await ask(ws, "hi"))["type"] == "agent_response"
            assert standin.conversations[conv_id].authorization_method == "signed_url"
            async with open_ws(ws_url(standin, query + "x")) as ws:
                code, _ = await closed_with(ws)
                assert code == 1008
            await trio.sleep(901)  # signed URLs expire after 15 minutes
            async with open_ws(ws_url(standin, query)) as ws:
                code, _ = await closed_with(ws)
                assert code == 1008


async def test_signature_with_conversation_id_is_single_use(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            base = standin.base_url
            assert base is not None
            url = standin.signed_url(
                "agent_sandbox", base.replace("http", "ws"), include_conversation_id=True
            )
            query = url.split("?", 1)[1]
            async with session(standin, query=query) as (_, conv_id):
                assert f"conversation_id={conv_id}" in query
            async with open_ws(ws_url(standin, query)) as ws:
                code, _ = await closed_with(ws)
                assert code == 1008


# --- after the session --------------------------------------------------------------------


async def test_a_finished_session_is_processing_then_done_on_advance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with serve_elevenlabs() as standin:
            async with session(standin) as (ws, conv_id):
                await next_event(ws)
                await ask(ws, "bye")
            await trio.testing.wait_all_tasks_blocked()
            record = standin.conversations[conv_id]
            assert record.status == "processing"
            assert standin.session(conv_id).closed_by == "client"
            await standin.advance(5)
            assert status_of(record) == "done"
            assert record.analysis is not None
            assert record.analysis.transcript_summary == (
                "The user said: bye. The agent answered 2 times."
            )
            assert [(e.role, e.message) for e in record.transcript] == [
                ("agent", "Hello! How can I help you today?"),
                ("user", "bye"),
                ("agent", "You said: bye"),
            ]
