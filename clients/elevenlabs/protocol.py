"""The ElevenLabs agent WebSocket in text mode, as plain functions over values.

Nothing here touches a socket, a clock or a logger: building the frames the client sends,
classifying the frames the server sends, folding one turn's frames into an answer, and
explaining why the server closed. ``clients.elevenlabs.session`` does the I/O around these rules,
and the tests read every rule without a socket. The wire shapes come from
docs/reference/elevenlabs-agents.md §1; where the reference is silent the choice is
written next to the rule.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

DynamicValue = str | int | float | bool

#: Frame types that only matter to a voice client or a debugger. A text-mode session reads
#: past them (and counts them) instead of treating them as errors: which of them arrive
#: depends on the agent's ``client_events`` setting, not on anything the client sends.
NOT_FOR_TEXT_MODE = frozenset(
    {
        "audio",
        "user_transcript",
        "tentative_user_transcript",
        "vad_score",
        "interruption",
        "internal_turn_probability",
        "internal_tentative_agent_response",
        "agent_reasoning_response_part",
        "asr_initiation_metadata",
        "context_usage",
        "agent_response_metadata",
        "mcp_tool_call",
        "mcp_connection_status",
        "rich_content",
        "agent_typing",
        "external_agent_connected",
        "external_agent_disconnected",
        "guardrail_triggered",
        "queue_status",
        "client_error",
        "dtmf_request",
    }
)

#: Close reason the JS client sends when the user ends a session (§1.5 step 9).
USER_ENDED_REASON = "User ended conversation"

#: What a tool call the relay does not handle gets: an error, so the agent answers in words
#: instead of waiting for a result that never comes.
TOOL_NOT_AVAILABLE = "tool not available in WhatsApp relay"


# --- URLs ------------------------------------------------------------------------------------


def websocket_url(base_url: str, agent_id: str) -> str:
    """The conversation WebSocket for a public agent, derived from the REST base URL.

    ``http`` becomes ``ws`` and ``https`` becomes ``wss``, as the Python SDK does, so the
    sandbox's ``http://127.0.0.1:PORT`` and ``https://api.elevenlabs.io`` both work.
    """
    parts = urllib.parse.urlsplit(base_url.rstrip("/"))
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL, got {redact_url(base_url)!r}")
    query = urllib.parse.urlencode({"agent_id": agent_id})
    return urllib.parse.urlunsplit(
        (schemes[parts.scheme], parts.netloc, parts.path + "/v1/convai/conversation", query, "")
    )


def signed_url_endpoint(base_url: str) -> str:
    """Where a private agent's signed URL is fetched (the hyphen path; the underscore one is
    deprecated)."""
    return base_url.rstrip("/") + "/v1/convai/conversation/get-signed-url"


@attrs.frozen
class WebSocketTarget:
    """Where a ``ws``/``wss`` URL points: what to connect to and what to ask for."""

    host: str
    port: int
    resource: str
    secure: bool

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.secure else 80) else f"{host}:{self.port}"


def websocket_target(url: str) -> WebSocketTarget:
    """Split a WebSocket URL the way trio-websocket's ``connect_websocket_url`` does (an
    empty path is ``/``; the query, signature included, is part of the resource)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws(s) URL: {redact_url(url)!r}")
    secure = parts.scheme == "wss"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebSocketTarget(parts.hostname, parts.port or (443 if secure else 80), resource, secure)


def redact_url(url: str) -> str:
    """A URL safe to log or put in an error: no query string, no user info.

    A signed URL carries a ``conversation_signature`` that grants a session for 15 minutes,
    so it is treated like the API key: never written anywhere.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    suffix = "?..." if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + suffix


_SIGNATURE = re.compile(r"(conversation_signature|token)=[^&\s'\"]+")


def redact_signatures(text: str) -> str:
    """``text`` with every signed-URL credential (``conversation_signature=...``, and the
    obsolete ``token=...``) replaced by ``***``."""
    return _SIGNATURE.sub(r"\1=***", text)


# --- client -> server frames (§1.3) ---------------------------------------------------------


def initiation_frame(user_id: str, dynamic_variables: Mapping[str, DynamicValue]) -> dict[str, Any]:
    """The first frame of every session: text only, the phone as ``user_id``.

    The override is the documented nested ``conversation.text_only`` (not the Python SDK's
    top-level placement). It needs the ``conversation.text_only`` permission on the agent;
    without it the server closes 1008 ``override_error``.
    """
    for name, value in dynamic_variables.items():
        if not isinstance(value, str | int | float | bool):
            raise TypeError(f"dynamic variable {name!r} must be str, int, float or bool")
    return {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {"conversation": {"text_only": True}},
        "dynamic_variables": dict(dynamic_variables),
        "user_id": user_id,
    }


def pong_frame(event_id: int) -> dict[str, Any]:
    return {"type": "pong", "event_id": event_id}


def user_message_frame(text: str) -> dict[str, Any]:
    return {"type": "user_message", "text": text}


def contextual_update_frame(text: str, context_id: str | None = None) -> dict[str, Any]:
    """A non-interrupting update; with ``context_id`` only the latest one with that id is
    kept in the agent's context."""
    frame: dict[str, Any] = {"type": "contextual_update", "text": text}
    if context_id is not None:
        frame["context_id"] = context_id
    return frame


def user_activity_frame() -> dict[str, Any]:
    """The only keep-alive the server accepts: a raw space or a client ``ping`` closes 1008."""
    return {"type": "user_activity"}


def client_tool_result_frame(
    tool_call_id: str, result: str, *, is_error: bool = False
) -> dict[str, Any]:
    """The answer to a ``client_tool_call`` (§1.3): all four keys are required, and
    ``result`` is a string in the schema (the JS client stringifies objects)."""
    return {
        "type": "client_tool_result",
        "tool_call_id": tool_call_id,
        "result": result,
        "is_error": is_error,
    }


def tool_refusal_frame(tool_call_id: str) -> dict[str, Any]:
    return client_tool_result_frame(tool_call_id, TOOL_NOT_AVAILABLE, is_error=True)


def encode(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


# --- server -> client frames (§1.4) ---------------------------------------------------------


@attrs.frozen
class Metadata:
    conversation_id: str
    agent_output_audio_format: str | None
    user_input_audio_format: str | None


@attrs.frozen
class Ping:
    event_id: int


@attrs.frozen
class AgentResponse:
    text: str
    event_id: int | None


@attrs.frozen
class ResponsePart:
    """One streamed ``agent_chat_response_part``; an unknown part type counts as a delta, as
    in the Python SDK."""

    kind: Literal["start", "delta", "stop"]
    text: str
    event_id: int | None


@attrs.frozen
class Correction:
    original: str
    corrected: str
    event_id: int | None


@attrs.frozen
class ClientToolCall:
    """``client_tool_call``: the agent asks the client to run one of its client tools and
    (for a tool configured to wait) to answer with ``client_tool_result``."""

    tool_call_id: str
    tool_name: str
    event_id: int | None
    parameters: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ToolActivity:
    """A server-side tool (``agent_tool_request``/``agent_tool_response``): the agent
    pauses its answer while the tool runs and usually answers again afterwards."""

    kind: Literal["request", "response"]
    tool_name: str
    event_id: int | None


@attrs.frozen
class ResponseComplete:
    """``agent_response_complete`` (shape unconfirmed): an explicit end of the agent's turn."""

    event_id: int | None


@attrs.frozen
class ServerError:
    """An ``error`` event; the server sends one just before it closes for a reason."""

    error_type: str
    code: int | None
    message: str


@attrs.frozen
class Ignored:
    """A frame a text-mode client reads past.

    ``why`` is ``"untyped"`` (no ``type``: audio chunks, binary frames), ``"not_for_text"``
    (audio, transcripts, VAD, ...), ``"unknown"`` (a type this client does not know) or
    ``"malformed"`` (not JSON, or a known type without its required keys).
    """

    type: str | None
    why: Literal["untyped", "not_for_text", "unknown", "malformed"]


ServerFrame = (
    Metadata
    | Ping
    | AgentResponse
    | ResponsePart
    | Correction
    | ClientToolCall
    | ToolActivity
    | ResponseComplete
    | ServerError
    | Ignored
)


def parse_server_frame(raw: str | bytes) -> ServerFrame:
    """Classify one frame from the server. Never raises: what it cannot use is ``Ignored``.

    Being lenient is deliberate: the event set grows (reasoning parts, rich content, queue
    status) and depends on agent settings, and one odd frame must not end a WhatsApp
    conversation. The session decides which ``Ignored`` frames matter (only a non-metadata
    first frame does).
    """
    if isinstance(raw, bytes):
        return Ignored(None, "untyped")
    try:
        decoded = json.loads(raw)
    except ValueError:
        return Ignored(None, "malformed")
    if not isinstance(decoded, dict):
        return Ignored(None, "malformed")
    frame_type = decoded.get("type")
    if not frame_type or not isinstance(frame_type, str):
        return Ignored(None, "untyped")
    parser = _PARSERS.get(frame_type)
    if parser is None:
        why: Literal["not_for_text", "unknown"] = (
            "not_for_text" if frame_type in NOT_FOR_TEXT_MODE else "unknown"
        )
        return Ignored(frame_type, why)
    try:
        return parser(decoded)
    except (KeyError, TypeError, ValueError):
        return Ignored(frame_type, "malformed")


_Parser = Callable[[Mapping[str, Any]], ServerFrame]


def _body(frame: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    body = frame[key]
    if not isinstance(body, dict):
        raise TypeError(key)
    return body


def _event_id(body: Mapping[str, Any]) -> int | None:
    """Event ids are integers in the AsyncAPI; one docs page shows strings, some Python
    tests omit them. A number-like string is accepted, anything else is "no id"."""
    value = body.get("event_id")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError("text")
    return value


def _metadata(frame: Mapping[str, Any]) -> Metadata:
    body = _body(frame, "conversation_initiation_metadata_event")
    conversation_id = body["conversation_id"]
    if not isinstance(conversation_id, str) or not conversation_id:
        raise ValueError("conversation_id")
    return Metadata(
        conversation_id,
        body.get("agent_output_audio_format"),
        body.get("user_input_audio_format"),
    )


def _ping(frame: Mapping[str, Any]) -> Ping:
    event_id = _event_id(_body(frame, "ping_event"))
    if event_id is None:
        raise ValueError("event_id")
    return Ping(event_id)


def _agent_response(frame: Mapping[str, Any]) -> AgentResponse:
    body = _body(frame, "agent_response_event")
    return AgentResponse(_text(body["agent_response"]), _event_id(body))


def _response_part(frame: Mapping[str, Any]) -> ResponsePart:
    body = _body(frame, "text_response_part")
    kind = body.get("type")
    part_kind: Literal["start", "delta", "stop"] = kind if kind in ("start", "stop") else "delta"
    return ResponsePart(part_kind, _text(body.get("text")), _event_id(body))


def _correction(frame: Mapping[str, Any]) -> Correction:
    body = _body(frame, "agent_response_correction_event")
    return Correction(
        _text(body.get("original_agent_response")),
        _text(body["corrected_agent_response"]),
        _event_id(body),
    )


def _client_tool_call(frame: Mapping[str, Any]) -> ClientToolCall:
    body = _body(frame, "client_tool_call")
    tool_call_id = body["tool_call_id"]
    if not isinstance(tool_call_id, str):
        raise TypeError("tool_call_id")
    parameters = body.get("parameters")
    return ClientToolCall(
        tool_call_id,
        str(body.get("tool_name") or ""),
        _event_id(body),
        dict(parameters) if isinstance(parameters, dict) else {},
    )


def _tool_activity(kind: Literal["request", "response"], key: str) -> _Parser:
    def parse(frame: Mapping[str, Any]) -> ToolActivity:
        body = _body(frame, key)
        return ToolActivity(kind, str(body.get("tool_name") or ""), _event_id(body))

    return parse


def _response_complete(frame: Mapping[str, Any]) -> ResponseComplete:
    body = frame.get("agent_response_complete_event")
    return ResponseComplete(_event_id(body) if isinstance(body, dict) else None)


def _error(frame: Mapping[str, Any]) -> ServerError:
    body = frame.get("error_event")
    if not isinstance(body, dict):
        body = {}
    code = body.get("code")
    message = body.get("message") or body.get("reason") or ""
    return ServerError(
        str(body.get("error_type") or "unknown"),
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        str(message),
    )


_PARSERS: Mapping[str, _Parser] = {
    "conversation_initiation_metadata": _metadata,
    "ping": _ping,
    "agent_response": _agent_response,
    "agent_chat_response_part": _response_part,
    "agent_response_correction": _correction,
    "client_tool_call": _client_tool_call,
    "agent_tool_request": _tool_activity("request", "agent_tool_request"),
    "agent_tool_response": _tool_activity("response", "agent_tool_response"),
    "agent_tool_response_full_payload": _tool_activity(
        "response", "agent_tool_response_full_payload"
    ),
    "agent_response_complete": _response_complete,
    "error": _error,
}


def frame_type(frame: ServerFrame) -> str | None:
    """The wire ``type`` a parsed frame came with (``None`` for frames without one)."""
    if isinstance(frame, Ignored):
        return frame.type
    if isinstance(frame, ToolActivity):
        return f"agent_tool_{frame.kind}"
    return _WIRE_TYPES[type(frame)]


_WIRE_TYPES: Mapping[type, str] = {
    Metadata: "conversation_initiation_metadata",
    Ping: "ping",
    AgentResponse: "agent_response",
    ResponsePart: "agent_chat_response_part",
    Correction: "agent_response_correction",
    ClientToolCall: "client_tool_call",
    ResponseComplete: "agent_response_complete",
    ServerError: "error",
}

TurnFrame = (
    AgentResponse | ResponsePart | Correction | ClientToolCall | ToolActivity | ResponseComplete
)


# --- one turn: frames folded into an answer ---------------------------------------------------


@attrs.frozen
class Segment:
    """What the agent said under one ``event_id`` during a turn.

    ``response`` is the last ``agent_response`` text (it overwrites the streamed text, as
    the official widget does when it arrives before ``stop``); ``parts`` are the streamed
    deltas; ``corrected`` replaces both once a correction arrives.
    """

    event_id: int | None
    response: str | None = None
    parts: tuple[str, ...] = ()
    streaming: bool = False
    stream_stopped: bool = False
    corrected: str | None = None

    @property
    def text(self) -> str:
        if self.corrected is not None:
            return self.corrected
        if self.response is not None:
            return self.response
        return "".join(self.parts)


@attrs.frozen
class TurnDraft:
    """One turn's frames so far, folded. Built by ``fold``; read by ``is_complete``,
    ``answer_text`` and ``explain_unfinished``.

    Attributes:
        stale_up_to: Response frames with an ``event_id`` at or below this belong to an
            earlier turn (or to the first message) and are not part of this answer.
        awaiting_after_tool: A tool ran (or was refused) after the last ``agent_response``:
            the agent will speak again, so the turn is not over yet.
        completed_by_signal: ``agent_response_complete`` arrived.
    """

    stale_up_to: int | None = None
    segments: tuple[Segment, ...] = ()
    streamed_parts: int = 0
    awaiting_after_tool: bool = False
    completed_by_signal: bool = False
    stale_frames: int = 0
    tool_calls: int = 0

    def segment(self, event_id: int | None) -> Segment | None:
        for segment in self.segments:
            if segment.event_id == event_id:
                return segment
        return None


def _is_stale(draft: TurnDraft, event_id: int | None) -> bool:
    return event_id is not None and draft.stale_up_to is not None and event_id <= draft.stale_up_to


def _with_segment(draft: TurnDraft, event_id: int | None, **changes: Any) -> TurnDraft:
    """Update (or append) the segment for ``event_id``; ``changes`` may be callables of the
    old value."""
    old = draft.segment(event_id)
    base = old if old is not None else Segment(event_id)
    values = {
        name: change(getattr(base, name)) if callable(change) else change
        for name, change in changes.items()
    }
    new = attrs.evolve(base, **values)
    if old is None:
        return attrs.evolve(draft, segments=(*draft.segments, new))
    return attrs.evolve(
        draft, segments=tuple(new if segment is old else segment for segment in draft.segments)
    )


def fold(draft: TurnDraft, frame: TurnFrame) -> TurnDraft:
    """Add one server frame to a turn.

    Rules where the reference leaves room:

    * A correction whose ``event_id`` this turn has not seen is for an earlier answer (which
      the caller may already have sent): it is counted as stale, not applied.
    * A correction without an ``event_id`` applies to the latest segment.
    * A client tool call (answered or refused by the session) or a server tool request means
      the agent will speak again after the tool, so the turn waits for a later
      ``agent_response``; ``end_call`` is the exception: after it the agent says nothing
      more. (How long the session waits after a tool it answered is the session's choice:
      ``AgentSessionConfig.after_tool_wait``.)
    """
    match frame:
        case AgentResponse(text, event_id):
            if _is_stale(draft, event_id):
                return attrs.evolve(draft, stale_frames=draft.stale_frames + 1)
            draft = _with_segment(draft, event_id, response=text)
            return attrs.evolve(draft, awaiting_after_tool=False)
        case ResponsePart(kind, text, event_id):
            if _is_stale(draft, event_id):
                return attrs.evolve(draft, stale_frames=draft.stale_frames + 1)
            if kind == "start":
                return _with_segment(draft, event_id, streaming=True, parts=())
            if kind == "stop":
                return _with_segment(draft, event_id, streaming=False, stream_stopped=True)
            draft = _with_segment(draft, event_id, parts=lambda parts: (*parts, text))
            return attrs.evolve(draft, streamed_parts=draft.streamed_parts + 1)
        case Correction(_, corrected, event_id):
            target = event_id
            if event_id is None and draft.segments:
                target = draft.segments[-1].event_id
            if not draft.segments or draft.segment(target) is None:
                return attrs.evolve(draft, stale_frames=draft.stale_frames + 1)
            return _with_segment(draft, target, corrected=corrected)
        case ClientToolCall():
            return attrs.evolve(draft, awaiting_after_tool=True, tool_calls=draft.tool_calls + 1)
        case ToolActivity(kind, tool_name, _):
            if tool_name == "end_call":
                return attrs.evolve(draft, awaiting_after_tool=False)
            if kind == "request":
                return attrs.evolve(draft, awaiting_after_tool=True)
            return draft
        case ResponseComplete():
            return attrs.evolve(draft, completed_by_signal=True)
    raise TypeError(f"not a turn frame: {frame!r}")


def has_response(draft: TurnDraft) -> bool:
    return any(segment.response is not None for segment in draft.segments)


def is_complete(draft: TurnDraft) -> bool:
    """Whether the agent has finished answering.

    Complete when ``agent_response_complete`` arrived, or when an ``agent_response`` has
    arrived, no streamed response is still open (``start`` without ``stop``; the final
    ``agent_response`` may come before or after ``stop``) and no tool is pending. A stopped
    stream alone is not enough: the docs require the ``agent_response`` event in text mode,
    and it is the authoritative text.
    """
    if draft.completed_by_signal:
        return True
    return (
        has_response(draft)
        and not draft.awaiting_after_tool
        and not any(segment.streaming for segment in draft.segments)
    )


def answer_text(draft: TurnDraft) -> str:
    """The answer: each segment's final text, in order, blank ones dropped, joined by a blank
    line (a turn has several segments only when the agent spoke before and after a tool)."""
    texts = [segment.text.strip() for segment in draft.segments]
    return "\n\n".join(text for text in texts if text)


def answer_event_id(draft: TurnDraft) -> int | None:
    for segment in reversed(draft.segments):
        if segment.event_id is not None:
            return segment.event_id
    return None


def is_corrected(draft: TurnDraft) -> bool:
    return any(segment.corrected is not None for segment in draft.segments)


def highest_event_id(draft: TurnDraft) -> int | None:
    ids = [segment.event_id for segment in draft.segments if segment.event_id is not None]
    if draft.stale_up_to is not None:
        ids.append(draft.stale_up_to)
    return max(ids) if ids else None


def explain_unfinished(draft: TurnDraft) -> str:
    """Why a turn that ran out of time did not complete, for the timeout error."""
    if not draft.segments and not draft.tool_calls:
        return "the agent sent nothing for this turn"
    if draft.awaiting_after_tool:
        return "the agent called a tool and did not answer after it"
    if any(segment.streaming for segment in draft.segments):
        return "the streamed answer was started but never stopped"
    if not has_response(draft):
        return (
            "streamed parts arrived but no agent_response: enable the agent_response "
            "client event on the agent"
        )
    return "the answer did not complete"


# --- closes ------------------------------------------------------------------------------------


@attrs.frozen
class CloseCause:
    """A server close explained for a person, and whether reconnecting can help."""

    cause: str
    retryable: bool


_TEXT_ONLY_HINT = (
    "enable the text_only override in the agent's Security tab "
    "(platform_settings.overrides conversation.text_only)"
)


def explain_close(code: int | None, reason: str | None, error: ServerError | None) -> CloseCause:
    """Turn a close code, its reason and the ``error`` event before it into a cause.

    1008 is a contract error: the same initiation data gets the same answer, so it is never
    retryable. In the field it nearly always means an override the agent does not allow
    (here: ``text_only``) or a dynamic variable the prompt needs and the client did not send
    (elevenlabs/packages#63, #337). Every other close is worth one reopen: 1000 is the end of
    the agent's session (max duration, idle timeout, ``end_call``), 1002 a timeout or an
    upstream failure, 1011 a server crash, 1006 a lost connection.
    """
    said = _server_words(reason, error)
    error_type = error.error_type if error is not None else None
    if code == 1008:
        if error_type == "override_error":
            return CloseCause(
                f"the agent does not allow the overrides this client sends: {_TEXT_ONLY_HINT}"
                f"{said}",
                retryable=False,
            )
        if error_type in ("missing_dynamic_variable", "missing_dynamic_variable_transfer"):
            names = missing_variable_names(error.message if error is not None else "")
            named = f" ({', '.join(names)})" if names else ""
            return CloseCause(
                f"the agent's prompt needs a dynamic variable{named} that the session did not "
                f"send: add it to dynamic_variables{said}",
                retryable=False,
            )
        if error_type is not None:
            return CloseCause(
                f"the server refused the session's input ({error_type}){said}", retryable=False
            )
        return CloseCause(
            "the server closed with 1008 (policy violation). Likely causes: an override the "
            f"agent does not allow ({_TEXT_ONLY_HINT}), or a dynamic variable the agent's "
            f"prompt needs and the session did not send{said}",
            retryable=False,
        )
    if error_type == "max_duration_exceeded":
        return CloseCause(
            f"the session reached the agent's maximum duration{said}; reopen it", retryable=True
        )
    if error_type == "transport_receive_timeout":
        return CloseCause(
            f"the session was idle too long (no user input){said}; reopen it", retryable=True
        )
    if code == 1000:
        return CloseCause(
            "the server ended the session normally (max duration, an idle timeout or the "
            f"agent's end_call){said}; reopen it",
            retryable=True,
        )
    if code == 1002:
        what = f" ({error_type})" if error_type else ""
        return CloseCause(f"the server ended the session on an error{what}{said}", retryable=True)
    if code == 1011:
        return CloseCause(f"the server failed internally (1011){said}", retryable=True)
    if code == 1006 or code is None:
        return CloseCause("the connection was lost without a close frame", retryable=True)
    if code == 1009:
        return CloseCause(f"a frame exceeded the client's size limit (1009){said}", retryable=True)
    if code == 3008:
        return CloseCause(f"the agent is at its concurrency limit (3008){said}", retryable=True)
    return CloseCause(f"the server closed the session with code {code}{said}", retryable=True)


def _server_words(reason: str | None, error: ServerError | None) -> str:
    words = [text for text in (error.message if error else None, reason) if text]
    unique = list(dict.fromkeys(words))
    return f"; the server said: {' / '.join(repr(text) for text in unique)}" if unique else ""


_NAMES_AFTER_COLON = re.compile(r"variables?[^:]*:\s*(.+)$", re.IGNORECASE)
_QUOTED = re.compile(r"['\"`{]{1,2}([A-Za-z_][A-Za-z0-9_]*)['\"`}]{1,2}")


def missing_variable_names(message: str) -> tuple[str, ...]:
    """The variable names a ``missing_dynamic_variable`` message mentions, if it names any.

    The real wording is undocumented: names in quotes or braces are taken first, then a
    comma-separated list after "variable(s):".
    """
    quoted = _QUOTED.findall(message)
    if quoted:
        return tuple(dict.fromkeys(quoted))
    match = _NAMES_AFTER_COLON.search(message)
    if match is None:
        return ()
    names = [name.strip(" .'\"") for name in match.group(1).split(",")]
    return tuple(name for name in names if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name))
