"""One agent WebSocket session: the I/O around the rules in ``_protocol.py``.

The session owns a nursery with four tasks besides the receive loop: pings, the idle
watchdog, the max-duration timer and the turn worker (answers run there so a slow answer
never stops pongs and contextual updates from being read). Every frame goes out through
``send`` under one lock; ``close`` sends the error event, closes the socket and cancels the
nursery, so nothing the session started outlives it.

Timing decisions where the reference is silent or contradictory (§9):

* Metadata: the server waits up to ``init_wait_seconds`` for the client's first frame
  (normally ``conversation_initiation_client_data``), then sends
  ``conversation_initiation_metadata`` as the first frame of every accepted session, and only
  then rejects a bad initiation (the "1008 right after metadata" seen in the wild).
* Idle: after ``idle_timeout_seconds`` without client input the session sends
  ``error{error_type: "transport_receive_timeout", code: 1002}`` and closes 1002 (the
  AsyncAPI's rule, not Android's 1000). Pongs are not input (the SDKs answer pings on their
  own, so counting them would keep a silent client alive forever); an agent answer restarts
  the wait, as the user's turn begins then.
* Pings: every ``ping_interval_seconds``; ``ping_ms`` is the round trip of the last answered
  ping in milliseconds, ``null`` before the first pong. A missed pong is recorded, not fatal.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import attrs
import trio
from quart.wrappers import Websocket

import sandbox.elevenlabs._protocol as proto
from sandbox.elevenlabs._agents import AgentConfig, ClientToolScript
from sandbox.elevenlabs._brain import SessionContext, Turn, ask_brain
from sandbox.elevenlabs._faults import Faults
from sandbox.elevenlabs._records import ConversationRecord, TranscriptEntry

logger = logging.getLogger(__name__)


@attrs.define(eq=False)
class LiveSession:
    """A connected (or finished) WebSocket session and everything it saw.

    Attributes:
        received: Every frame from the client, decoded when it was a JSON object, else the
            raw text (malformed frames are kept as sent).
        sent: Every event the stand-in sent, in order.
        faults: Faults for this connection only; ``None`` falls back to the agent's.
        closed_by: ``"server"`` when the stand-in closed (``close_code`` says why),
            ``"client"`` when the client went away.
    """

    conversation_id: str
    agent_id: str
    query: dict[str, str]
    conversation: ConversationRecord
    started_at: float
    faults: Faults | None = None
    received: list[Any] = attrs.field(factory=list)
    sent: list[dict[str, Any]] = attrs.field(factory=list)
    initiation: dict[str, Any] = attrs.field(factory=dict)
    dynamic_variables: dict[str, Any] = attrs.field(factory=dict)
    contextual_updates: list[tuple[str | None, str]] = attrs.field(factory=list)
    turns: list[Turn] = attrs.field(factory=list)
    user_activity_count: int = 0
    pongs: list[tuple[int, int]] = attrs.field(factory=list)
    unanswered_pings: list[int] = attrs.field(factory=list)
    text_only: bool = False
    active: bool = True
    closed_by: Literal["server", "client"] | None = None
    close_code: int | None = None
    close_reason: str | None = None
    brain_error: str | None = None
    #: ``client_tool_call`` bodies sent, in order, and the ``client_tool_result`` frames
    #: that answered them, by ``tool_call_id``.
    tool_calls: list[dict[str, Any]] = attrs.field(factory=list)
    tool_results: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    _tool_answered: dict[str, trio.Event] = attrs.field(factory=dict)
    _websocket: Websocket | None = None
    _send_lock: trio.Lock = attrs.field(factory=trio.Lock)
    _cancel_scope: trio.CancelScope | None = None
    _event_id: int = 0
    _last_input_at: float = 0.0
    _last_rtt_ms: int | None = None
    _pings_out: dict[int, float] = attrs.field(factory=dict)
    _last_agent: tuple[str, int] | None = None

    def context(self) -> SessionContext:
        return SessionContext(
            agent_id=self.agent_id,
            conversation_id=self.conversation_id,
            dynamic_variables=dict(self.dynamic_variables),
            contextual_updates=tuple(self.contextual_updates),
            turns=tuple(self.turns),
        )

    def next_event_id(self) -> int:
        self._event_id += 1
        return self._event_id

    async def send(self, event: dict[str, Any]) -> bool:
        """Send one event unless the session is closed; says whether it went out."""
        async with self._send_lock:
            if not self.active or self._websocket is None:
                return False
            self.sent.append(event)
            await self._websocket.send(_dumps(event))
            return True

    async def close(self, code: int, reason: str, error: dict[str, Any] | None = None) -> None:
        """Close from the server side: optional ``error`` event, close frame, stop tasks."""
        async with self._send_lock:
            if not self.active or self._websocket is None:
                return
            if error is not None:
                self.sent.append(error)
                await self._websocket.send(_dumps(error))
            self.active = False
            self.closed_by = "server"
            self.close_code = code
            self.close_reason = reason
            await self._websocket.close(code, reason)
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def close_for(self, violation: proto.ProtocolViolation) -> None:
        code = violation.close_code
        await self.close(
            code,
            violation.message,
            proto.error_event(violation.error_type, violation.message, code),
        )

    async def send_agent_text(self, text: str, stream: bool) -> None:
        """One agent turn: optional streamed parts, then ``agent_response``; recorded."""
        event_id = self.next_event_id()
        if stream:
            await self.send(proto.agent_chat_response_part_event("", "start", event_id))
            for part in proto.stream_parts(text):
                await self.send(proto.agent_chat_response_part_event(part, "delta", event_id))
            await self.send(proto.agent_chat_response_part_event("", "stop", event_id))
        if await self.send(proto.agent_response_event(text, event_id)):
            self._last_agent = (text, event_id)
            self.turns.append(Turn("agent", text))
            self.conversation.transcript.append(
                TranscriptEntry("agent", text, self.seconds_in_call())
            )
            self._last_input_at = trio.current_time()

    async def correct_last_response(self, corrected: str) -> None:
        """Send ``agent_response_correction`` for the last answer and rewrite it in history."""
        if self._last_agent is None:
            raise LookupError("the agent has not answered yet in this session")
        original, event_id = self._last_agent
        await self.send(proto.agent_response_correction_event(original, corrected, event_id))
        self._last_agent = (corrected, event_id)
        for turns in (self.turns,):
            for index in range(len(turns) - 1, -1, -1):
                if turns[index].role == "agent":
                    turns[index] = Turn("agent", corrected)
                    break
        transcript = self.conversation.transcript
        for index in range(len(transcript) - 1, -1, -1):
            if transcript[index].role == "agent":
                transcript[index] = attrs.evolve(transcript[index], message=corrected)
                break

    def seconds_in_call(self) -> int:
        return int(trio.current_time() - self.started_at)

    async def call_client_tool(self, script: ClientToolScript) -> None:
        """One tool turn as a real agent plays it: words, the call, the wait, words."""
        if script.say_before:
            await self.send_agent_text(script.say_before, stream=False)
        tool_call_id = f"toolu_{self.conversation_id[-8:]}_{len(self.tool_calls) + 1}"
        event = proto.client_tool_call_event(
            script.tool_name, tool_call_id, script.parameters, self.next_event_id()
        )
        answered = self._tool_answered.setdefault(tool_call_id, trio.Event())
        if not await self.send(event):
            return
        self.tool_calls.append(dict(event["client_tool_call"]))
        result = ""
        if script.expects_response:
            with trio.move_on_after(script.response_timeout_seconds):
                await answered.wait()
            result = str(self.tool_results.get(tool_call_id, {}).get("result", ""))
        if script.say_after:
            await self.send_agent_text(script.say_after.replace("{result}", result), stream=False)

    def tool_result_arrived(self, body: Any) -> None:
        tool_call_id = str(body.get("tool_call_id"))
        self.tool_results[tool_call_id] = dict(body)
        self._tool_answered.setdefault(tool_call_id, trio.Event()).set()


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event)


@attrs.frozen
class SessionSettings:
    """The stand-in's knobs a session reads (kept apart so the session needs no stand-in)."""

    ping_interval_seconds: float
    init_wait_seconds: float
    faults_for: Callable[[LiveSession], Faults]
    #: The agent's configuration now (a test may change it while a session is live);
    #: ``None``: the one the session started with.
    agent_for: Callable[[str], AgentConfig] | None = None


async def run_session(
    websocket: Websocket, session: LiveSession, agent: AgentConfig, settings: SessionSettings
) -> None:
    """Serve an accepted socket until either side closes it."""
    session._websocket = websocket
    session._last_input_at = trio.current_time()
    try:
        async with trio.open_nursery() as nursery:
            session._cancel_scope = nursery.cancel_scope
            await _converse(websocket, session, agent, settings, nursery)
    finally:
        if session.active:
            session.active = False
            session.closed_by = "client"


async def _converse(
    websocket: Websocket,
    session: LiveSession,
    agent: AgentConfig,
    settings: SessionSettings,
    nursery: trio.Nursery,
) -> None:
    first: str | bytes | None = None
    with trio.move_on_after(settings.init_wait_seconds):
        first = await websocket.receive()
    await session.send(proto.initiation_metadata_event(session.conversation_id))

    first_message = proto.parse_client_frame(first) if first is not None else None
    if first is not None:
        _record(session, first, first_message)
    if isinstance(first_message, proto.ProtocolViolation):
        await session.close_for(first_message)
        return
    initiation: dict[str, Any] = {}
    if first_message is not None and first_message.type == "conversation_initiation_client_data":
        initiation = dict(first_message.body)
    violation = proto.check_initiation(
        initiation, agent.allowed_overrides, agent.required_dynamic_variables
    )
    if violation is not None:
        await session.close_for(violation)
        return
    _apply_initiation(session, agent, initiation)

    turns_in, turns_out = trio.open_memory_channel[str](math.inf)
    max_duration = proto.override_value(initiation, "conversation.max_duration_seconds")
    if not isinstance(max_duration, int | float):
        max_duration = agent.max_duration_seconds
    nursery.start_soon(
        _max_duration_timer,
        session,
        float(max_duration),
        proto.override_value(initiation, "agent.max_conversation_duration_message"),
    )
    nursery.start_soon(_ping_loop, session, settings.ping_interval_seconds)
    if agent.idle_timeout_seconds is not None:
        nursery.start_soon(_idle_watchdog, session, agent.idle_timeout_seconds)
    nursery.start_soon(_turn_worker, session, agent, settings, turns_out)

    first_text = proto.render_template(
        str(proto.override_value(initiation, "agent.first_message") or agent.first_message),
        _template_variables(session),
    )
    if first_text:
        await session.send_agent_text(first_text, stream=False)

    if (
        isinstance(first_message, proto.ClientMessage)
        and first_message is not None
        and (first_message.type != "conversation_initiation_client_data")
    ):
        await _dispatch(session, first_message, turns_in)
    while True:
        frame = await websocket.receive()
        message = proto.parse_client_frame(frame)
        _record(session, frame, message)
        if isinstance(message, proto.ProtocolViolation):
            await session.close_for(message)
            return
        await _dispatch(session, message, turns_in)


def _record(
    session: LiveSession,
    frame: str | bytes,
    message: proto.ClientMessage | proto.ProtocolViolation | None,
) -> None:
    if isinstance(message, proto.ClientMessage):
        session.received.append(dict(message.body))
    else:
        session.received.append(frame if isinstance(frame, str) else repr(frame))


def _template_variables(session: LiveSession) -> dict[str, Any]:
    return {
        "system__conversation_id": session.conversation_id,
        "system__agent_id": session.agent_id,
        **session.dynamic_variables,
    }


def _apply_initiation(session: LiveSession, agent: AgentConfig, initiation: dict[str, Any]) -> None:
    session.initiation = initiation
    session.dynamic_variables = dict(initiation.get("dynamic_variables") or {})
    text_only = proto.requested_text_only(initiation)
    session.text_only = agent.text_only if text_only is None else text_only
    record = session.conversation
    record.initiation = initiation
    record.text_only = session.text_only
    record.user_id = initiation.get("user_id")
    source = (initiation.get("source_info") or {}).get("source")
    if isinstance(source, str):
        record.source = source


async def _dispatch(
    session: LiveSession, message: proto.ClientMessage, turns: trio.MemorySendChannel[str]
) -> None:
    body = message.body
    if message.type == "pong":
        event_id = int(body["event_id"])
        sent_at = session._pings_out.pop(event_id, None)
        if sent_at is not None:
            # Rounded up: a measured round trip is never 0 ms, and the Python SDK skips
            # its latency callback when ping_ms is falsy.
            rtt = math.ceil((trio.current_time() - sent_at) * 1000)
            session._last_rtt_ms = rtt
            session.pongs.append((event_id, rtt))
        return
    session._last_input_at = trio.current_time()
    if message.type == "user_message":
        if body.get("text") is not None:
            await turns.send(str(body["text"]))
    elif message.type == "multimodal_message":
        text = body.get("text")
        if isinstance(text, dict) and isinstance(text.get("text"), str):
            await turns.send(text["text"])
    elif message.type == "contextual_update":
        context_id = body.get("context_id")
        session.contextual_updates.append(
            (context_id if isinstance(context_id, str) else None, str(body["text"]))
        )
    elif message.type == "user_activity":
        session.user_activity_count += 1
    elif message.type == "client_tool_result":
        session.tool_result_arrived(body)
    # conversation_initiation_client_data after the start, feedback, MCP approvals and
    # user audio are recorded (in ``received``) and have no further effect.


async def _turn_worker(
    session: LiveSession,
    agent: AgentConfig,
    settings: SessionSettings,
    turns: trio.MemoryReceiveChannel[str],
) -> None:
    async for text in turns:
        faults = settings.faults_for(session)
        context = session.context()
        session.turns.append(Turn("user", text))
        session.conversation.transcript.append(
            TranscriptEntry("user", text, session.seconds_in_call())
        )
        if faults.reply_delay_seconds > 0:
            await trio.sleep(faults.reply_delay_seconds)
        if faults.close_mid_turn is not None:
            if agent.stream_text_parts:
                await session.send(
                    proto.agent_chat_response_part_event("", "start", session.next_event_id())
                )
            await session.close(faults.close_mid_turn, "Connection closed mid-turn (sandbox fault)")
            return
        if faults.no_answer:
            continue
        current = settings.agent_for(session.agent_id) if settings.agent_for else agent
        script = current.tool_script_for(text)
        if script is not None:
            await session.call_client_tool(script)
            continue
        if faults.empty_answer:
            answer = ""
        else:
            try:
                answer = await ask_brain(agent.brain, context, text)
            except Exception as exc:
                # A broken brain is a broken LLM: the service reports llm_error and closes.
                session.brain_error = f"{type(exc).__name__}: {exc}"
                logger.warning("sandbox brain failed in %s: %s", session.conversation_id, exc)
                await session.close(1002, "LLM error", proto.error_event("llm_error", "LLM error"))
                return
        await session.send_agent_text(answer, stream=agent.stream_text_parts)


async def _ping_loop(session: LiveSession, interval: float) -> None:
    event_id = 0
    while True:
        await trio.sleep(interval)
        event_id += 1
        for missed in session._pings_out:
            if missed not in session.unanswered_pings:
                session.unanswered_pings.append(missed)
        session._pings_out[event_id] = trio.current_time()
        await session.send(proto.ping_event(event_id, session._last_rtt_ms))


async def _idle_watchdog(session: LiveSession, idle_seconds: float) -> None:
    while True:
        deadline = session._last_input_at + idle_seconds
        if trio.current_time() >= deadline:
            message = f"No user input for {idle_seconds:g} seconds"
            await session.close(
                1002, message, proto.error_event("transport_receive_timeout", message, 1002)
            )
            return
        await trio.sleep_until(deadline)


async def _max_duration_timer(session: LiveSession, seconds: float, final_message: Any) -> None:
    await trio.sleep(seconds)
    if isinstance(final_message, str) and final_message:
        await session.send_agent_text(final_message, stream=False)
    await session.close(
        1000,
        "Maximum duration exceeded",
        proto.error_event("max_duration_exceeded", "Maximum duration exceeded", 1000),
    )
