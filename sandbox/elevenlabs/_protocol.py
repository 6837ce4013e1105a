"""The agent WebSocket protocol as plain functions over values: parse, validate, build.

Nothing here touches a socket or a clock, so every rule of the wire reference
(docs/reference/elevenlabs-agents.md §1) can be read and tested on its own. The
session (``_session.py``) is the only caller that does I/O with these values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

#: ``error_event.error_type`` -> close code, from the AsyncAPI ``ErrorType`` table (§1.6).
#: ``None`` marks the types the table lists without a code.
ERROR_CLOSE_CODES: Mapping[str, int | None] = {
    "unknown": None,
    "invalid_message": 1008,
    "telephony_agent_error": 1008,
    "mcp_tool_error": 1008,
    "mcp_https_error": 1008,
    "value_error": 1008,
    "missing_fields": 1008,
    "override_error": 1008,
    "missing_dynamic_variable_transfer": 1008,
    "missing_dynamic_variable": 1008,
    "websocket_disconnect": None,
    "safety_violation": 1002,
    "llm_timeout": 1002,
    "transport_receive_timeout": 1002,
    "asyncio_timeout": 1002,
    "http_exception": 1002,
    "max_duration_exceeded": 1000,
    "llm_error": 1002,
    "custom_llm_error": 1002,
    "cascade_brain_error": 1002,
    "asr_transcription_error": 1002,
    "vad_error": 1002,
    "turn_probability_error": 1002,
    "tts_cascade_error": 1002,
    "redis_timeout_error": 1002,
    "unknown_websocket_crash": 1011,
}

#: Client message types the server understands, with the keys each one must carry (§1.3).
#: ``user_message.text`` is nullable and optional, so it is not listed.
CLIENT_REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "conversation_initiation_client_data": (),
    "pong": ("event_id",),
    "user_message": (),
    "user_activity": (),
    "contextual_update": ("text",),
    "client_tool_result": ("tool_call_id", "result", "is_error"),
    "feedback": ("event_id",),
    "mcp_tool_approval_result": ("tool_call_id", "is_approved"),
    "multimodal_message": (),
}

#: The audio format the stand-in announces. It never streams audio, but clients read the
#: field (the JS client defaults it when absent; the docs say always read it).
AUDIO_FORMAT = "pcm_16000"


@attrs.frozen
class ClientMessage:
    """A well-formed client frame: its ``type`` (``user_audio_chunk`` for audio) and body."""

    type: str
    body: Mapping[str, Any]


@attrs.frozen
class ProtocolViolation:
    """Why a frame was refused: the ``error_type`` to report and a human message."""

    error_type: str
    message: str

    @property
    def close_code(self) -> int:
        return ERROR_CLOSE_CODES.get(self.error_type) or 1008


def parse_client_frame(frame: str | bytes) -> ClientMessage | ProtocolViolation:
    """Classify one incoming frame.

    Every frame must be a JSON text frame holding an object with a known ``type``, except user
    audio, which is ``{"user_audio_chunk": "<base64>"}`` with no ``type``. A frame that is
    not JSON, not an object, binary, or of an unknown type (including the client-sent
    ``{"type": "ping"}`` keep-alive that the real server rejects) is ``invalid_message``;
    a known type missing a required key is ``missing_fields``; a required key of the wrong
    JSON type is ``invalid_message`` again. All of them close 1008.
    """
    if isinstance(frame, bytes):
        return ProtocolViolation("invalid_message", "Binary frames are not supported")
    try:
        decoded = json.loads(frame)
    except ValueError:
        return ProtocolViolation("invalid_message", "Invalid message received")
    if not isinstance(decoded, dict):
        return ProtocolViolation("invalid_message", "Invalid message received")
    message_type = decoded.get("type")
    if message_type is None and "user_audio_chunk" in decoded:
        if not isinstance(decoded["user_audio_chunk"], str):
            return ProtocolViolation("invalid_message", "user_audio_chunk must be a string")
        return ClientMessage("user_audio_chunk", decoded)
    if not isinstance(message_type, str) or message_type not in CLIENT_REQUIRED_FIELDS:
        return ProtocolViolation("invalid_message", "Invalid message received")
    missing = [key for key in CLIENT_REQUIRED_FIELDS[message_type] if key not in decoded]
    if missing:
        return ProtocolViolation(
            "missing_fields", f"{message_type} is missing required field(s): {', '.join(missing)}"
        )
    wrong = _wrong_types(message_type, decoded)
    if wrong is not None:
        return ProtocolViolation("invalid_message", wrong)
    return ClientMessage(message_type, decoded)


def _wrong_types(message_type: str, body: Mapping[str, Any]) -> str | None:
    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checks: dict[str, list[tuple[str, bool]]] = {
        "pong": [("event_id", is_int(body.get("event_id")))],
        "contextual_update": [("text", isinstance(body.get("text"), str))],
        "user_message": [("text", body.get("text") is None or isinstance(body["text"], str))],
        "feedback": [("event_id", is_int(body.get("event_id")))],
        "client_tool_result": [("is_error", isinstance(body.get("is_error"), bool))],
        "mcp_tool_approval_result": [("is_approved", isinstance(body.get("is_approved"), bool))],
        "conversation_initiation_client_data": [
            (key, body.get(key) is None or isinstance(body[key], dict))
            for key in ("conversation_config_override", "dynamic_variables")
        ],
    }
    for key, ok in checks.get(message_type, []):
        if not ok:
            return f"{message_type}.{key} has the wrong type"
    return None


# --- conversation_initiation_client_data -------------------------------------------------


def override_paths(initiation: Mapping[str, Any]) -> frozenset[str]:
    """The override permissions an initiation message needs, as dotted paths.

    Paths are relative to ``conversation_config_override`` ("agent.first_message",
    "conversation.text_only", "tts.voice_id", "agent.prompt.prompt"), plus the top-level
    flags ``custom_llm_extra_body``, ``enable_starting_workflow_node_id_from_client`` and
    ``enable_procedure_ids_from_client`` when those fields carry a value. Empty objects and
    ``null`` leaves ask for nothing (the JS client sends ``"tts": {}``; the Python SDK sends
    ``"custom_llm_extra_body": {}``). The Python SDK's top-level ``text_only`` is the same
    permission as the documented ``conversation.text_only``: both placements are accepted.
    """
    override = initiation.get("conversation_config_override") or {}
    paths: set[str] = set()

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
        elif value is not None:
            paths.add(prefix)

    for key, value in override.items():
        if key == "text_only":
            if value is not None:
                paths.add("conversation.text_only")
        else:
            walk(str(key), value)
    if initiation.get("custom_llm_extra_body"):
        paths.add("custom_llm_extra_body")
    if initiation.get("starting_workflow_node_id"):
        paths.add("enable_starting_workflow_node_id_from_client")
    if initiation.get("procedure_ids"):
        paths.add("enable_procedure_ids_from_client")
    return frozenset(paths)


def check_initiation(
    initiation: Mapping[str, Any],
    allowed_overrides: frozenset[str],
    required_dynamic_variables: frozenset[str],
) -> ProtocolViolation | None:
    """Apply the agent's security settings to an initiation message.

    An override the agent does not allow is ``override_error``; a dynamic variable that is
    required and absent is ``missing_dynamic_variable``; a dynamic variable that is not a
    string, number or boolean is ``value_error``. All close 1008. Overrides are checked
    first, as the server must know the configuration before it renders the prompt.
    """
    forbidden = sorted(override_paths(initiation) - allowed_overrides)
    if forbidden:
        return ProtocolViolation(
            "override_error",
            f"Override for field(s) {', '.join(forbidden)} is not allowed by config.",
        )
    variables = initiation.get("dynamic_variables") or {}
    bad = sorted(
        name for name, value in variables.items() if not isinstance(value, str | int | float)
    )
    if bad:
        return ProtocolViolation(
            "value_error", f"Dynamic variable(s) {', '.join(bad)} must be string, number or bool"
        )
    missing = sorted(required_dynamic_variables - set(variables))
    if missing:
        return ProtocolViolation(
            "missing_dynamic_variable",
            f"Missing required dynamic variables: {', '.join(missing)}",
        )
    return None


def override_value(initiation: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of ``conversation_config_override``, or ``None``."""
    node: Any = initiation.get("conversation_config_override") or {}
    for key in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def requested_text_only(initiation: Mapping[str, Any]) -> bool | None:
    """``text_only`` from either placement; the documented nested one wins if both are set."""
    nested = override_value(initiation, "conversation.text_only")
    if isinstance(nested, bool):
        return nested
    top = (initiation.get("conversation_config_override") or {}).get("text_only")
    return top if isinstance(top, bool) else None


_VARIABLE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


def render_template(template: str, variables: Mapping[str, Any]) -> str:
    """Fill ``{{name}}`` placeholders the way agent prompts and first messages are filled.

    Unknown names stay as written, so a missing variable is visible in the output rather
    than silently empty.
    """

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            return match.group(0)
        value = variables[name]
        return str(value).lower() if isinstance(value, bool) else str(value)

    return _VARIABLE.sub(fill, template)


def effective_contextual_updates(updates: Sequence[tuple[str | None, str]]) -> tuple[str, ...]:
    """The contextual updates still in the agent's context, oldest first.

    Only the most recent update with a given ``context_id`` is kept (§1.3); updates without
    an id all stay.
    """
    last_index: dict[str, int] = {}
    for index, (context_id, _) in enumerate(updates):
        if context_id is not None:
            last_index[context_id] = index
    return tuple(
        text
        for index, (context_id, text) in enumerate(updates)
        if context_id is None or last_index[context_id] == index
    )


# --- server -> client events (§1.4) ----------------------------------------------------------


def initiation_metadata_event(conversation_id: str) -> dict[str, Any]:
    return {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": conversation_id,
            "agent_output_audio_format": AUDIO_FORMAT,
            "user_input_audio_format": AUDIO_FORMAT,
        },
    }


def ping_event(event_id: int, ping_ms: int | None) -> dict[str, Any]:
    """A ping; ``ping_ms`` is always present (null allowed) because the Python SDK indexes it."""
    return {"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": ping_ms}}


def agent_response_event(text: str, event_id: int) -> dict[str, Any]:
    return {
        "type": "agent_response",
        "agent_response_event": {"agent_response": text, "event_id": event_id},
    }


def agent_chat_response_part_event(text: str, part_type: str, event_id: int) -> dict[str, Any]:
    return {
        "type": "agent_chat_response_part",
        "text_response_part": {"text": text, "type": part_type, "event_id": event_id},
    }


def agent_response_correction_event(original: str, corrected: str, event_id: int) -> dict[str, Any]:
    return {
        "type": "agent_response_correction",
        "agent_response_correction_event": {
            "original_agent_response": original,
            "corrected_agent_response": corrected,
            "event_id": event_id,
        },
    }


def client_tool_call_event(
    tool_name: str, tool_call_id: str, parameters: Mapping[str, Any], event_id: int
) -> dict[str, Any]:
    """``client_tool_call`` with the AsyncAPI's four required keys (§1.4)."""
    return {
        "type": "client_tool_call",
        "client_tool_call": {
            "tool_name": tool_name,
            "tool_call_id": tool_call_id,
            "parameters": dict(parameters),
            "event_id": event_id,
        },
    }


def error_event(error_type: str, message: str, code: int | None = None) -> dict[str, Any]:
    """An ``error`` event; ``code`` defaults to the one the error table gives the type."""
    return {
        "type": "error",
        "error_event": {
            "code": code if code is not None else ERROR_CLOSE_CODES.get(error_type),
            "message": message,
            "error_type": error_type,
            "reason": message,
            "debug_message": None,
            "details": None,
        },
    }


def stream_parts(text: str) -> list[str]:
    """Split an answer into the ``delta`` texts of a streamed response: one per word.

    Joining the parts gives the text back exactly, so a client that concatenates deltas
    and one that reads ``agent_response`` agree.
    """
    parts = re.findall(r"\S+\s*|\s+", text)
    return parts or [""]
