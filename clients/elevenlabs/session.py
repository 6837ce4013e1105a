"""A text-mode session with the ElevenLabs agent that phoned the user.

A phone actor owns one ``AgentSession``: it relays each WhatsApp message with ``ask`` and
sends the answer back. The session is a cache and the log is the truth: ElevenLabs ends
sessions on its own (max duration, idle input, errors), so the actor reopens one on the next
need and primes it with ``send_context``. Every failure is an ``AgentSessionError`` that says
whether reopening can help (``retryable``), so the actor never loops on a 1008.

The wire rules (frames, folding a turn, close codes) are plain functions in
``clients.elevenlabs.protocol``; this module is the I/O around them: the signed URL over httpx, the
WebSocket over trio-websocket, and the trio clock for timeouts and latency.

Structure: ``open`` starts one host task in the owner's nursery. The host task owns the
TCP stream and a private nursery for trio-websocket's reader task, so a refused handshake
(which trio-websocket raises from its reader task) becomes an ``AgentUnavailable`` from
``open`` instead of an exception in the actor's nursery, and the socket is closed on every
path. The host task answers pings, answers the client tools its owner handles (refusing
the others) and feeds turn frames to the waiting ``ask``; it ends when the socket closes,
and is cancelled with its owner.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import httpx
import trio
import trio_websocket

from actors.retry import parse_retry_after
from clients.elevenlabs import protocol as proto

logger = logging.getLogger(__name__)

#: Incoming frame limit. trio-websocket's default (1 MiB) closes 1009 on large frames; the
#: Python SDK raised its limit to 16 MiB after 1011 disconnects (elevenlabs-python PR #482).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024

#: How long ``aclose`` (and the end of an abandoned turn) waits for the close handshake.
CLOSE_TIMEOUT = 2.0

_Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]

#: HTTP statuses worth another attempt later: busy, overloaded, or a gateway in between.
_RETRYABLE_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))


@attrs.frozen
class AgentSessionConfig:
    """How to reach the agent, and for whom.

    Attributes:
        base_url: ``https://api.elevenlabs.io`` or the sandbox's ``http://127.0.0.1:PORT``;
            the WebSocket URL is derived from it (http -> ws, https -> wss).
        api_key: ``None`` for a public agent (connect directly); set for a private agent
            (fetch a signed URL first). Never logged, never put in an error.
        user_id: The phone, E.164; sent as ``user_id`` so ElevenLabs' history ties the
            WhatsApp session to the person.
        turn_timeout: Seconds from ``user_message`` to a complete answer.
        connect_timeout: Seconds for the signed URL, the handshake and the metadata frame.
        first_message_wait: After the metadata, how long ``open`` waits for the agent's
            first message (an agent configured with one sends it unprompted). Consuming it
            in ``open`` keeps it from being read as the answer to the first ``ask``; ``open``
            returns as soon as it arrives. Use 0 for an agent known to have none.
    """

    base_url: str
    agent_id: str
    api_key: str | None = attrs.field(repr=False)
    user_id: str
    dynamic_variables: Mapping[str, proto.DynamicValue] = attrs.field(factory=dict)
    turn_timeout: float = 30.0
    connect_timeout: float = 10.0
    first_message_wait: float = 1.0
    #: Called with ``("->", frame)`` for every frame sent after the handshake and
    #: ``("<-", frame)`` for every parsed frame received (``aftercall agent chat`` prints
    #: them); it must not block or raise.
    frame_observer: Callable[[str, object], None] | None = attrs.field(default=None, eq=False)
    #: Client tools this session answers, by name, with the ``result`` text to answer
    #: (``client_tool_result``, ``is_error`` false); any other tool call is refused with an
    #: error result. The calls answered during a turn come back in ``AgentAnswer.tool_calls``.
    client_tools: Mapping[str, str] = attrs.field(factory=dict)
    #: After answering a client tool, how long the turn waits for the agent's words about
    #: it before it ends with what it has (the agent may say nothing after a hand-off).
    after_tool_wait: float = 5.0
    #: Called (from the session's task; it must not block or raise) with a client tool
    #: call this session answered while no turn was waiting: an agent that speaks before
    #: its tool call, without streaming, ends the turn with those words, and the call
    #: comes after it (see ``protocol.fold``).
    on_tool_call_between_turns: Callable[[proto.ClientToolCall], None] | None = attrs.field(
        default=None, eq=False
    )


@attrs.frozen
class AgentAnswer:
    """The agent's answer to one ``ask``.

    Attributes:
        text: Possibly empty: the caller decides the fallback (nothing empty goes to Twilio).
        event_id: The server's id of the (last) response, when it sent one.
        agent_seconds: Trio-clock seconds from ``user_message`` sent to answer complete.
        streamed_parts: How many ``agent_chat_response_part`` deltas arrived.
        corrected: An ``agent_response_correction`` replaced (part of) the text.
        tool_calls: The client tools this session answered during the turn (those in
            ``AgentSessionConfig.client_tools``), in order.
        complete: The agent finished its answer. ``False`` only when it called a client
            tool this session answered and said nothing more within ``after_tool_wait``
            (or the session closed): ``text`` is what it said before, possibly nothing.
    """

    text: str
    event_id: int | None
    agent_seconds: float
    streamed_parts: int
    corrected: bool
    tool_calls: tuple[proto.ClientToolCall, ...] = ()
    complete: bool = True


@attrs.frozen
class AgentSessionStatistics:
    """A snapshot of one session, for logs, metrics and the admin view.

    ``opened_at`` is on the trio clock. ``stale_frames`` are answer frames of an earlier
    turn that arrived late (ignored); ``late_corrections`` are corrections to an answer
    already returned (not applied). ``ignored_frames`` counts every frame read past (not for
    text mode, unknown, malformed, or without a ``type``); ``untyped_frames`` is the part of
    it without a ``type``.
    """

    conversation_id: str
    opened_at: float
    turns: int
    failed_turns: int
    pings_answered: int
    ignored_frames: int
    untyped_frames: int
    stale_frames: int
    late_corrections: int
    tool_calls_refused: int
    tool_calls_answered: int
    context_updates_sent: int
    keep_alives_sent: int
    first_message: str | None
    last_agent_seconds: float | None
    closed: bool
    close_code: int | None


# --- errors ----------------------------------------------------------------------------------


class AgentSessionError(Exception):
    """Any failure of the agent session.

    Attributes:
        retryable: Whether opening a new session (after a pause) can help.
        code: The WebSocket close code or HTTP status, when there is one.
        reason: The cause, in words a person can act on.
    """

    def __init__(
        self, message: str, *, retryable: bool, code: int | None = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code
        self.reason = reason or message


class AgentSessionClosed(AgentSessionError):
    """The session is closed (by the server, the network, or ``aclose``).

    Attributes:
        close_reason: The server's close reason text, if any.
        error_type: ``error_event.error_type`` sent before the close, if any.
        missing_variables: For ``missing_dynamic_variable``: the names, if the server said.
    """

    def __init__(
        self,
        code: int | None,
        close_reason: str | None,
        cause: proto.CloseCause,
        error: proto.ServerError | None = None,
    ) -> None:
        shown = f"close code {code}" if code is not None else "no close code"
        super().__init__(
            f"agent session closed ({shown}): {cause.cause}",
            retryable=cause.retryable,
            code=code,
            reason=cause.cause,
        )
        self.close_reason = close_reason
        self.error_type = error.error_type if error is not None else None
        missing: tuple[str, ...] = ()
        if error is not None and error.error_type.startswith("missing_dynamic_variable"):
            missing = proto.missing_variable_names(error.message)
        self.missing_variables = missing


class AgentTurnTimeout(AgentSessionError):
    """No complete answer within ``turn_timeout``. The session is closed afterwards, so a
    late answer can never be taken for the answer to the next message.

    Attributes:
        partial_text: What had arrived (often empty).
    """

    def __init__(self, seconds: float, why: str, partial_text: str) -> None:
        super().__init__(
            f"the agent did not answer within {seconds:g} s: {why}", retryable=True, reason=why
        )
        self.partial_text = partial_text


class AgentProtocolError(AgentSessionError):
    """The server broke the protocol (e.g. a first frame that is not the metadata). Not
    retryable: the same endpoint will do the same again; check ``base_url``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class AgentUnavailable(AgentSessionError):
    """ElevenLabs is busy or unreachable: HTTP 429/5xx on the signed URL or the handshake,
    refused or timed-out connections. Retryable, after ``retry_after`` when it was given."""

    def __init__(
        self, message: str, *, code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retryable=True, code=code)
        self.retry_after = retry_after


class AgentRejected(AgentSessionError):
    """ElevenLabs refused the request for good (HTTP 401/403/404/422: a wrong API key or
    agent id). Not retryable until the configuration changes."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message, retryable=False, code=code)


# --- the session -----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Turn:
    """The ``ask`` in progress: the reader folds frames into ``draft`` and sets ``done``."""

    draft: proto.TurnDraft
    done: trio.Event = attrs.field(factory=trio.Event)
    complete: bool = False
    closed: bool = False
    #: Client tool calls answered during the turn.
    tool_calls: list[proto.ClientToolCall] = attrs.field(factory=list)
    #: The wait for the answer: a tool call answered brings its deadline closer.
    wait: trio.CancelScope | None = None


class AgentSession:
    """One text-mode WebSocket session. Create it with ``open``."""

    conversation_id: str

    def __init__(self, config: AgentSessionConfig) -> None:
        self._config = config
        self._ws: trio_websocket.WebSocketConnection | None = None
        self.conversation_id = ""
        self._opened_at = trio.current_time()
        self._turn: _Turn | None = None
        self._stale_up_to: int | None = None
        self._user_messages_sent = 0
        self._first_message: str | None = None
        self._first_response_seen = trio.Event()
        self._last_error: proto.ServerError | None = None
        self._close_info: tuple[int | None, str | None] | None = None
        self._close_error: AgentSessionClosed | None = None
        self._closing_locally = False
        self._finished = trio.Event()
        self._close_wait: trio.CancelScope | None = None
        self._turns = 0
        self._failed_turns = 0
        self._pings_answered = 0
        self._ignored_frames = 0
        self._untyped_frames = 0
        self._stale_frames = 0
        self._late_corrections = 0
        self._tool_calls_refused = 0
        self._tool_calls_answered = 0
        self._context_updates_sent = 0
        self._keep_alives_sent = 0
        self._last_agent_seconds: float | None = None

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, nursery: trio.Nursery, http: httpx.AsyncClient, config: AgentSessionConfig
    ) -> AgentSession:
        """Connect, send the initiation data and wait for the metadata (and the agent's first
        message, see ``first_message_wait``).

        The session's task runs in ``nursery`` (the actor's), so it lives exactly as long as
        its owner. Raises ``AgentUnavailable`` (retryable), ``AgentRejected``,
        ``AgentProtocolError`` or ``AgentSessionClosed`` (a 1008 right after the metadata
        is how a missing override permission or dynamic variable shows).
        """
        url = await _session_url(http, config)
        if config.api_key is not None:
            _keep_signatures_out_of_library_logs()
        session = cls(config)
        await nursery.start(session._host, url)
        if config.first_message_wait > 0:
            with trio.move_on_after(config.first_message_wait):
                await session._first_response_seen.wait()
        if session._close_error is not None and not session._closing_locally:
            raise session._close_error
        return session

    async def _host(self, url: str, *, task_status: trio.TaskStatus[None]) -> None:
        target = proto.websocket_target(url)
        stream: _Stream | None = None
        started = False
        try:
            async with trio.open_nursery() as connection_nursery:
                with trio.fail_after(self._config.connect_timeout):
                    stream = await _open_stream(target)
                    self._ws = await trio_websocket.wrap_client_stream(
                        connection_nursery,
                        stream,
                        target.host_header,
                        target.resource,
                        max_message_size=MAX_MESSAGE_SIZE,
                    )
                    await self._handshake(self._ws)
                started = True
                task_status.started()
                await self._read_frames(self._ws)
                # Leave trio-websocket's reader a moment to finish the closing handshake.
                connection_nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
        except BaseExceptionGroup as group:
            failure = _connection_failure(group, url, self._config)
            if failure is None:
                raise
            if not started:
                raise failure from None
            self._record_close(None, str(failure))
        finally:
            # State first: under cancellation the await below raises at its checkpoint.
            if self._close_error is None:
                # Cancelled with its owner: no close frame was read or sent.
                cause = proto.CloseCause("the session's task ended with its owner", True)
                self._close_info = (None, None)
                self._close_error = AgentSessionClosed(None, None, cause)
            self._finished.set()
            if self._close_wait is not None:
                self._close_wait.cancel()
            self._wake_waiters()
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _handshake(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Initiation data first; ``conversation_initiation_metadata`` must come back first.

        An ``error`` event before it is kept (the close that follows is explained with it).
        """
        initiation = proto.initiation_frame(self._config.user_id, self._config.dynamic_variables)
        try:
            await ws.send_message(proto.encode(initiation))
            while True:
                frame = proto.parse_server_frame(await ws.get_message())
                if isinstance(frame, proto.ServerError):
                    self._last_error = frame
                    continue
                if isinstance(frame, proto.Metadata):
                    self.conversation_id = frame.conversation_id
                    break
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose(1002, "expected conversation_initiation_metadata")
                raise AgentProtocolError(
                    "the first frame from the agent WebSocket was "
                    f"{_describe(frame)}, not conversation_initiation_metadata "
                    f"(is base_url {proto.redact_url(self._config.base_url)} ElevenLabs?)"
                )
        except trio_websocket.ConnectionClosed as closed:
            self._record_close(*_close_args(closed))
            assert self._close_error is not None
            raise self._close_error from None
        self._opened_at = trio.current_time()
        logger.info("agent session %s open (agent %s)", self.conversation_id, self._config.agent_id)

    # --- the reader ------------------------------------------------------------------------

    async def _read_frames(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            try:
                raw = await ws.get_message()
            except trio_websocket.ConnectionClosed as closed:
                self._record_close(*_close_args(closed))
                return
            frame = proto.parse_server_frame(raw)
            if self._config.frame_observer is not None:
                self._config.frame_observer("<-", frame)
            await self._handle(frame)

    async def _handle(self, frame: proto.ServerFrame) -> None:
        match frame:
            case proto.Ping(event_id):
                if await self._send_quietly(proto.pong_frame(event_id)):
                    self._pings_answered += 1
            case proto.ServerError():
                self._last_error = frame
                logger.warning(
                    "agent session %s: server error %s: %s",
                    self.conversation_id,
                    frame.error_type,
                    frame.message,
                )
            case proto.ClientToolCall(tool_call_id, tool_name):
                result = self._config.client_tools.get(tool_name)
                if result is None:
                    logger.info(
                        "agent session %s: refusing client tool %r",
                        self.conversation_id,
                        tool_name,
                    )
                    if await self._send_quietly(proto.tool_refusal_frame(tool_call_id)):
                        self._tool_calls_refused += 1
                else:
                    logger.info(
                        "agent session %s: client tool %r called", self.conversation_id, tool_name
                    )
                    if await self._send_quietly(
                        proto.client_tool_result_frame(tool_call_id, result)
                    ):
                        self._tool_calls_answered += 1
                    self._tool_answered(frame)
                self._fold(frame)
            case proto.Metadata():
                # A second metadata frame: the Python SDK treats it as fatal; a relay that
                # already has its conversation id has no use for it.
                self._ignored_frames += 1
            case proto.Ignored(_, why):
                self._ignored_frames += 1
                if why == "untyped":
                    self._untyped_frames += 1
            case _:
                self._fold(frame)

    def _tool_answered(self, call: proto.ClientToolCall) -> None:
        """Keep a tool call answered during a turn for the answer, and wait only
        ``after_tool_wait`` more for the agent's words about it."""
        turn = self._turn
        if turn is None or turn.done.is_set():
            if self._config.on_tool_call_between_turns is not None:
                self._config.on_tool_call_between_turns(call)
            return
        turn.tool_calls.append(call)
        if turn.wait is not None:
            soon = trio.current_time() + self._config.after_tool_wait
            turn.wait.deadline = min(turn.wait.deadline, soon)

    def _fold(self, frame: proto.TurnFrame) -> None:
        turn = self._turn
        if turn is None or turn.done.is_set():
            self._between_turns(frame)
            return
        turn.draft = proto.fold(turn.draft, frame)
        if proto.is_complete(turn.draft):
            turn.complete = True
            turn.done.set()

    def _between_turns(self, frame: proto.TurnFrame) -> None:
        """An answer frame with no ``ask`` waiting: the first message, or a late frame."""
        event_id = getattr(frame, "event_id", None)
        if event_id is not None:
            self._stale_up_to = max(event_id, self._stale_up_to or event_id)
        if isinstance(frame, proto.AgentResponse) and self._user_messages_sent == 0:
            if self._first_message is None:
                self._first_message = frame.text
            self._first_response_seen.set()
        elif isinstance(frame, proto.Correction):
            self._late_corrections += 1
        elif isinstance(frame, proto.AgentResponse | proto.ResponsePart):
            self._stale_frames += 1

    def _record_close(self, code: int | None, reason: str | None) -> None:
        if self._close_error is not None:
            return
        if self._closing_locally:
            code, reason = 1000, proto.USER_ENDED_REASON
            cause = proto.CloseCause("closed by this client", retryable=True)
        else:
            cause = proto.explain_close(code, reason, self._last_error)
            logger.info(
                "agent session %s closed by the server: %s",
                self.conversation_id or "-",
                cause.cause,
            )
        self._close_info = (code, reason)
        self._close_error = AgentSessionClosed(code, reason, cause, self._last_error)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        if self._turn is not None and not self._turn.done.is_set():
            self._turn.closed = True
            self._turn.done.set()
        self._first_response_seen.set()

    # --- sending ---------------------------------------------------------------------------

    async def _send(self, frame: Mapping[str, Any]) -> None:
        """Send one frame; a closed session raises ``AgentSessionClosed``."""
        self._raise_if_closed()
        assert self._ws is not None
        if self._config.frame_observer is not None:
            self._config.frame_observer("->", frame)
        try:
            await self._ws.send_message(proto.encode(frame))
        except trio_websocket.ConnectionClosed as closed:
            self._record_close(*_close_args(closed))
            self._raise_if_closed()

    async def _send_quietly(self, frame: Mapping[str, Any]) -> bool:
        """Send from the reader: a close is noticed by the next read, not raised here."""
        if self._ws is None or self._close_error is not None:
            return False
        if self._config.frame_observer is not None:
            self._config.frame_observer("->", frame)
        try:
            await self._ws.send_message(proto.encode(frame))
        except trio_websocket.ConnectionClosed:
            return False
        return True

    def _raise_if_closed(self) -> None:
        if self._close_error is not None:
            raise self._close_error

    # --- the public surface ----------------------------------------------------------------

    async def ask(self, text: str) -> AgentAnswer:
        """Send ``text`` as a ``user_message`` and return the agent's complete answer.

        One turn at a time (the actor serialises). A turn that does not complete (timeout,
        cancellation) closes the session: its answer could still arrive and would then be
        taken for the answer to the next message. Raises ``AgentTurnTimeout``,
        ``AgentSessionClosed`` (the session closed before the answer; ``retryable`` says
        whether to reopen) or ``trio.BusyResourceError`` for a second concurrent ``ask``.
        """
        if not text.strip():
            raise ValueError("ask needs non-blank text")
        if self._turn is not None:
            raise trio.BusyResourceError("another ask is in progress on this agent session")
        self._raise_if_closed()
        turn = _Turn(proto.TurnDraft(stale_up_to=self._stale_up_to))
        self._turn = turn
        finished = False
        try:
            self._user_messages_sent += 1
            await self._send(proto.user_message_frame(text))
            sent_at = trio.current_time()
            with trio.move_on_after(self._config.turn_timeout) as wait:
                turn.wait = wait
                await turn.done.wait()
            answer = self._conclude(turn, trio.current_time() - sent_at)
            # A turn ended on a tool call, without the agent's last word, is not finished:
            # the session closes, so a late answer cannot be taken for the next one's.
            finished = answer.complete
            return answer
        except AgentTurnTimeout:
            self._failed_turns += 1
            raise
        except AgentSessionError:
            finished = True
            self._failed_turns += 1
            raise
        finally:
            self._turn = None
            highest = proto.highest_event_id(turn.draft)
            if highest is not None:
                self._stale_up_to = max(highest, self._stale_up_to or highest)
            if not finished:
                with trio.CancelScope(shield=True):
                    await self._close_locally()

    def _conclude(self, turn: _Turn, seconds: float) -> AgentAnswer:
        draft = turn.draft
        answered = turn.complete or (
            # The close came after a full agent_response (e.g. end_call): the text is final.
            turn.closed and proto.has_response(draft) and not draft.awaiting_after_tool
        )
        if answered or turn.tool_calls:
            self._turns += 1
            self._last_agent_seconds = seconds
            return AgentAnswer(
                text=proto.answer_text(draft),
                event_id=proto.answer_event_id(draft),
                agent_seconds=seconds,
                streamed_parts=draft.streamed_parts,
                corrected=proto.is_corrected(draft),
                tool_calls=tuple(turn.tool_calls),
                complete=answered,
            )
        if turn.closed:
            self._raise_if_closed()
        raise AgentTurnTimeout(
            self._config.turn_timeout, proto.explain_unfinished(draft), proto.answer_text(draft)
        )

    async def send_context(self, text: str, context_id: str | None = None) -> None:
        """Send a ``contextual_update``: background the agent uses without answering it.

        Used to prime a reopened session with the call summary and recent turns. With
        ``context_id`` only the latest update with that id stays in the agent's context.
        """
        if not text.strip():
            raise ValueError("send_context needs non-blank text")
        await self._send(proto.contextual_update_frame(text, context_id))
        self._context_updates_sent += 1

    async def keep_alive(self) -> None:
        """Send ``user_activity`` (resets the server's turn timer; pongs do not)."""
        await self._send(proto.user_activity_frame())
        self._keep_alives_sent += 1

    @property
    def closed(self) -> bool:
        return self._close_error is not None

    @property
    def close_info(self) -> tuple[int | None, str | None] | None:
        """``(code, reason)`` once closed; ``(1000, "User ended conversation")`` after
        ``aclose``; code ``None`` when the connection was lost without a close frame."""
        return self._close_info

    @property
    def close_error(self) -> AgentSessionClosed | None:
        """Why the session closed, with its cause and whether reopening can help."""
        return self._close_error

    @property
    def first_message(self) -> str | None:
        """The agent's unprompted first message, if it sent one (never an answer)."""
        return self._first_message

    async def aclose(self) -> None:
        """Close normally (1000, "User ended conversation", as the JS SDK does) so the server
        stops the session (and its billing) now, and wait briefly for it to finish."""
        await self._close_locally()

    async def _close_locally(self) -> None:
        """Send the close and wait for the host task to finish, at most ``CLOSE_TIMEOUT``.

        The wait also ends when the host task finishes first (its owner was cancelled):
        trio-websocket's ``aclose`` would otherwise wait for a close reply that its
        cancelled reader can no longer deliver.
        """
        if self._ws is None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            self._close_wait = scope
            if self._close_error is None and not self._finished.is_set():
                self._closing_locally = True
                self._record_close(1000, proto.USER_ENDED_REASON)
                await self._ws.aclose(1000, proto.USER_ENDED_REASON)
            await self._finished.wait()
        self._close_wait = None

    def statistics(self) -> AgentSessionStatistics:
        code = self._close_info[0] if self._close_info is not None else None
        return AgentSessionStatistics(
            conversation_id=self.conversation_id,
            opened_at=self._opened_at,
            turns=self._turns,
            failed_turns=self._failed_turns,
            pings_answered=self._pings_answered,
            ignored_frames=self._ignored_frames,
            untyped_frames=self._untyped_frames,
            stale_frames=self._stale_frames,
            late_corrections=self._late_corrections,
            tool_calls_refused=self._tool_calls_refused,
            tool_calls_answered=self._tool_calls_answered,
            context_updates_sent=self._context_updates_sent,
            keep_alives_sent=self._keep_alives_sent,
            first_message=self._first_message,
            last_agent_seconds=self._last_agent_seconds,
            closed=self.closed,
            close_code=code,
        )


# --- the edges: signed URL and connection failures ------------------------------------------


async def _session_url(http: httpx.AsyncClient, config: AgentSessionConfig) -> str:
    """The WebSocket URL: direct for a public agent, signed for a private one."""
    if config.api_key is None:
        return proto.websocket_url(config.base_url, config.agent_id)
    endpoint = proto.signed_url_endpoint(config.base_url)
    where = proto.redact_url(endpoint)
    try:
        response = await http.get(
            endpoint,
            params={"agent_id": config.agent_id},
            headers={"xi-api-key": config.api_key},
            timeout=config.connect_timeout,
        )
    except httpx.TimeoutException:
        raise AgentUnavailable(f"the signed-URL request to {where} timed out") from None
    except httpx.TransportError as exc:
        raise AgentUnavailable(
            f"could not reach {where} for a signed URL ({type(exc).__name__})"
        ) from None
    if response.status_code != 200:
        detail = _scrub(_error_detail(response), config.api_key)
        status = response.status_code
        message = f"the signed-URL request to {where} got HTTP {status}{detail}"
        if status in _RETRYABLE_STATUSES:
            raise AgentUnavailable(
                message,
                code=status,
                retry_after=parse_retry_after(
                    response.headers.get("retry-after"), datetime.now(UTC)
                ),
            )
        if status == 401:
            message += ": check the ElevenLabs API key"
        elif status == 404:
            message += f": check the agent id {config.agent_id!r}"
        raise AgentRejected(message, code=status)
    try:
        signed_url = response.json()["signed_url"]
    except (ValueError, KeyError, TypeError):
        signed_url = None
    if not isinstance(signed_url, str) or not signed_url.startswith(("ws://", "wss://")):
        raise AgentProtocolError(f"the signed-URL response from {where} has no ws(s) signed_url")
    return signed_url


def _error_detail(response: httpx.Response) -> str:
    """The server's own words from an error body (``detail.message`` or the 422 list)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        words = detail.get("message") or detail.get("status")
        return f" ({words})" if words else ""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return f" ({detail[0].get('msg', '')})"
    return ""


def _scrub(text: str, secret: str | None) -> str:
    """Belt and braces: server text never carries the key out, even if a server echoed it."""
    return text.replace(secret, "***") if secret else text


def _close_args(closed: trio_websocket.ConnectionClosed) -> tuple[int | None, str | None]:
    """Code and reason of a close; the code as a plain int (trio-websocket may hand over
    wsproto's enum)."""
    if closed.reason is None:
        return None, None
    return int(closed.reason.code), closed.reason.reason


async def _open_stream(target: proto.WebSocketTarget) -> _Stream:
    """The TCP (or TLS) stream under the WebSocket, opened here so the session owns it.

    trio-websocket's ``connect_websocket_url`` opens the stream itself and never closes it
    when the handshake is refused or when the server starts the close (ElevenLabs' usual way
    to end a session): the socket is left to the garbage collector and a ``ResourceWarning``.
    Opening it here and handing it to ``wrap_client_stream`` (what ``connect_websocket_url``
    does inside) lets the host task close it on every path.
    """
    if target.secure:
        return await trio.open_ssl_over_tcp_stream(
            target.host,
            target.port,
            ssl_context=ssl.create_default_context(),
            https_compatible=True,
        )
    return await trio.open_tcp_stream(target.host, target.port)


class _SignatureRedactor(logging.Filter):
    """Rewrites records that would show a signed URL's ``conversation_signature``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = proto.redact_signatures(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _keep_signatures_out_of_library_logs() -> None:
    """trio-websocket logs the full URL it connects to at DEBUG; a signed URL grants a session
    for 15 minutes, so that line is redacted. Installed once, on the library's logger."""
    library = logging.getLogger("trio-websocket")
    if not any(isinstance(existing, _SignatureRedactor) for existing in library.filters):
        library.addFilter(_SignatureRedactor())


def _describe(frame: proto.ServerFrame) -> str:
    wire_type = proto.frame_type(frame)
    shown = f"a {wire_type!r} frame" if wire_type else "a frame without a type"
    return f"{shown} ({frame.why})" if isinstance(frame, proto.Ignored) else shown


def _connection_failure(
    group: BaseExceptionGroup[BaseException], url: str, config: AgentSessionConfig
) -> AgentSessionError | None:
    """Map what the connection nursery raised to one session error; ``None`` when the group
    holds anything else (a cancellation, a bug), which must propagate unchanged."""
    known = (
        AgentSessionError,
        trio_websocket.HandshakeError,
        trio.TooSlowError,
        OSError,
        trio.BrokenResourceError,
    )
    matched, rest = group.split(known)
    if matched is None or rest is not None:
        return None
    first: BaseException = matched
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    where = proto.redact_url(url)
    match first:
        case AgentSessionError():
            return first
        case trio_websocket.ConnectionRejected(status_code=status):
            message = f"the agent WebSocket handshake at {where} was refused with HTTP {status}"
            if status in _RETRYABLE_STATUSES:
                return AgentUnavailable(message, code=status)
            return AgentRejected(message, code=status)
        case trio.TooSlowError():
            return AgentUnavailable(
                f"the agent WebSocket at {where} did not open within {config.connect_timeout:g} s"
            )
        case _:
            what = type(first.__cause__ or first).__name__
            return AgentUnavailable(f"could not connect to the agent WebSocket at {where} ({what})")
