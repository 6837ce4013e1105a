"""The agent WebSocket rules of ``clients.elevenlabs.protocol``, without a socket."""

from __future__ import annotations

import json
from functools import reduce

import pytest

from clients.elevenlabs import protocol as proto

# --- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        (
            "https://api.elevenlabs.io",
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_1",
        ),
        ("http://127.0.0.1:8123/", "ws://127.0.0.1:8123/v1/convai/conversation?agent_id=agent_1"),
        (
            "https://example.test/proxy",
            "wss://example.test/proxy/v1/convai/conversation?agent_id=agent_1",
        ),
    ],
)
def test_websocket_url_is_derived_from_the_rest_base(base_url: str, expected: str) -> None:
    assert proto.websocket_url(base_url, "agent_1") == expected


def test_websocket_url_escapes_the_agent_id() -> None:
    assert proto.websocket_url("http://h", "a b&c").endswith("?agent_id=a+b%26c")


def test_websocket_url_refuses_a_base_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="http"):
        proto.websocket_url("ftp://example.test", "agent_1")


def test_signed_url_endpoint_uses_the_hyphen_path() -> None:
    assert (
        proto.signed_url_endpoint("https://api.elevenlabs.io/")
        == "https://api.elevenlabs.io/v1/convai/conversation/get-signed-url"
    )


def test_redact_url_drops_the_signature_and_credentials() -> None:
    url = "wss://user:pw@api.elevenlabs.io:443/v1/convai/conversation?conversation_signature=s3"
    redacted = proto.redact_url(url)
    assert "s3" not in redacted
    assert "pw" not in redacted
    assert redacted == "wss://api.elevenlabs.io:443/v1/convai/conversation?..."


@pytest.mark.parametrize(
    ("url", "target", "host_header"),
    [
        (
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a&conversation_signature=s",
            proto.WebSocketTarget(
                "api.elevenlabs.io",
                443,
                "/v1/convai/conversation?agent_id=a&conversation_signature=s",
                secure=True,
            ),
            "api.elevenlabs.io",
        ),
        (
            "ws://127.0.0.1:8123/v1/convai/conversation?agent_id=a",
            proto.WebSocketTarget("127.0.0.1", 8123, "/v1/convai/conversation?agent_id=a", False),
            "127.0.0.1:8123",
        ),
        ("ws://[::1]", proto.WebSocketTarget("::1", 80, "/", False), "[::1]"),
    ],
)
def test_websocket_target(url: str, target: proto.WebSocketTarget, host_header: str) -> None:
    assert proto.websocket_target(url) == target
    assert target.host_header == host_header


def test_websocket_target_refuses_other_schemes_without_showing_the_query() -> None:
    with pytest.raises(ValueError, match="not a ws") as refused:
        proto.websocket_target("https://h/x?conversation_signature=secret")
    assert "secret" not in str(refused.value)


def test_redact_signatures_in_free_text() -> None:
    text = "Connecting to ws://h:1/v1/convai/conversation?agent_id=a&conversation_signature=cvtkn_1"
    assert proto.redact_signatures(text) == (
        "Connecting to ws://h:1/v1/convai/conversation?agent_id=a&conversation_signature=***"
    )
    assert proto.redact_signatures("x?token=abc&agent_id=a") == "x?token=***&agent_id=a"


# --- client frames ---------------------------------------------------------------------------


def test_initiation_asks_for_text_only_with_the_phone_and_variables() -> None:
    frame = proto.initiation_frame("+15551234567", {"user_name": "Ana", "n": 3, "vip": True})
    assert frame == {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {"conversation": {"text_only": True}},
        "dynamic_variables": {"user_name": "Ana", "n": 3, "vip": True},
        "user_id": "+15551234567",
    }


def test_initiation_refuses_a_variable_the_server_would_refuse() -> None:
    with pytest.raises(TypeError, match="'items'"):
        proto.initiation_frame("+1555", {"items": ["a"]})  # type: ignore[dict-item]


def test_client_frames_have_the_documented_shapes() -> None:
    assert proto.pong_frame(7) == {"type": "pong", "event_id": 7}
    assert proto.user_message_frame("hi") == {"type": "user_message", "text": "hi"}
    assert proto.user_activity_frame() == {"type": "user_activity"}
    assert proto.contextual_update_frame("ctx") == {"type": "contextual_update", "text": "ctx"}
    assert proto.contextual_update_frame("ctx", "call") == {
        "type": "contextual_update",
        "text": "ctx",
        "context_id": "call",
    }
    assert proto.tool_refusal_frame("tc_1") == {
        "type": "client_tool_result",
        "tool_call_id": "tc_1",
        "result": "tool not available in WhatsApp relay",
        "is_error": True,
    }


def test_encode_keeps_unicode_readable() -> None:
    encoded = proto.encode(proto.user_message_frame("¿Qué tal? 👋"))
    assert "¿Qué tal? 👋" in encoded
    assert json.loads(encoded)["text"] == "¿Qué tal? 👋"


# --- server frames ---------------------------------------------------------------------------


def _raw(frame: object) -> str:
    return json.dumps(frame)


def test_metadata_frame() -> None:
    raw = _raw(
        {
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": "conv_1",
                "agent_output_audio_format": "pcm_16000",
                "user_input_audio_format": "pcm_16000",
            },
        }
    )
    assert proto.parse_server_frame(raw) == proto.Metadata("conv_1", "pcm_16000", "pcm_16000")


def test_metadata_without_conversation_id_is_malformed() -> None:
    raw = _raw(
        {"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {}}
    )
    assert proto.parse_server_frame(raw) == proto.Ignored(
        "conversation_initiation_metadata", "malformed"
    )


def test_ping_frame_with_null_ping_ms() -> None:
    raw = _raw({"type": "ping", "ping_event": {"event_id": 12, "ping_ms": None}})
    assert proto.parse_server_frame(raw) == proto.Ping(12)


def test_answer_frames() -> None:
    response = {
        "type": "agent_response",
        "agent_response_event": {"agent_response": "Hi", "event_id": 3},
    }
    part = {
        "type": "agent_chat_response_part",
        "text_response_part": {"text": "Hi", "type": "delta", "event_id": 3},
    }
    correction = {
        "type": "agent_response_correction",
        "agent_response_correction_event": {
            "original_agent_response": "Hi there",
            "corrected_agent_response": "Hi",
            "event_id": 3,
        },
    }
    assert proto.parse_server_frame(_raw(response)) == proto.AgentResponse("Hi", 3)
    assert proto.parse_server_frame(_raw(part)) == proto.ResponsePart("delta", "Hi", 3)
    assert proto.parse_server_frame(_raw(correction)) == proto.Correction("Hi there", "Hi", 3)


def test_an_unknown_part_type_is_a_delta_and_a_string_event_id_is_read() -> None:
    raw = _raw(
        {
            "type": "agent_chat_response_part",
            "text_response_part": {"text": "x", "type": "middle", "event_id": "9"},
        }
    )
    assert proto.parse_server_frame(raw) == proto.ResponsePart("delta", "x", 9)


def test_tool_frames() -> None:
    call = {
        "type": "client_tool_call",
        "client_tool_call": {
            "tool_name": "open_door",
            "tool_call_id": "tc_1",
            "parameters": {},
            "event_id": 8,
        },
    }
    request = {
        "type": "agent_tool_request",
        "agent_tool_request": {
            "tool_name": "lookup",
            "tool_call_id": "t2",
            "tool_type": "webhook",
            "event_id": 8,
        },
    }
    assert proto.parse_server_frame(_raw(call)) == proto.ClientToolCall("tc_1", "open_door", 8)
    assert proto.parse_server_frame(_raw(request)) == proto.ToolActivity("request", "lookup", 8)


def test_error_frame() -> None:
    raw = _raw(
        {
            "type": "error",
            "error_event": {
                "code": 1008,
                "message": "Missing required dynamic variables: call_summary",
                "error_type": "missing_dynamic_variable",
            },
        }
    )
    assert proto.parse_server_frame(raw) == proto.ServerError(
        "missing_dynamic_variable", 1008, "Missing required dynamic variables: call_summary"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_raw({"user_audio_chunk": "AAAA"}), proto.Ignored(None, "untyped")),
        (_raw({"type": ""}), proto.Ignored(None, "untyped")),
        (b"\x00\x01", proto.Ignored(None, "untyped")),
        ("not json", proto.Ignored(None, "malformed")),
        ("[1, 2]", proto.Ignored(None, "malformed")),
        (
            _raw({"type": "audio", "audio_event": {"audio_base_64": "", "event_id": 1}}),
            proto.Ignored("audio", "not_for_text"),
        ),
        (
            _raw({"type": "vad_score", "vad_score_event": {"vad_score": 0.9}}),
            proto.Ignored("vad_score", "not_for_text"),
        ),
        (_raw({"type": "brand_new_event"}), proto.Ignored("brand_new_event", "unknown")),
        (_raw({"type": "agent_response"}), proto.Ignored("agent_response", "malformed")),
        (_raw({"type": "ping", "ping_event": {}}), proto.Ignored("ping", "malformed")),
    ],
)
def test_frames_a_text_client_reads_past(raw: str | bytes, expected: proto.Ignored) -> None:
    assert proto.parse_server_frame(raw) == expected


@pytest.mark.parametrize(
    ("frame", "wire_type"),
    [
        (proto.Ping(1), "ping"),
        (proto.ToolActivity("response", "x", 1), "agent_tool_response"),
        (proto.ServerError("unknown", None, ""), "error"),
        (proto.Ignored("audio", "not_for_text"), "audio"),
        (proto.Ignored(None, "untyped"), None),
    ],
)
def test_frame_type_names_the_wire_type(frame: proto.ServerFrame, wire_type: str | None) -> None:
    assert proto.frame_type(frame) == wire_type


# --- folding a turn --------------------------------------------------------------------------


def _fold(*frames: proto.TurnFrame, stale_up_to: int | None = None) -> proto.TurnDraft:
    return reduce(proto.fold, frames, proto.TurnDraft(stale_up_to=stale_up_to))


def test_a_plain_agent_response_completes_the_turn() -> None:
    draft = _fold(proto.AgentResponse("Hello", 2))
    assert proto.is_complete(draft)
    assert proto.answer_text(draft) == "Hello"
    assert proto.answer_event_id(draft) == 2


def test_an_empty_agent_response_is_a_complete_empty_answer() -> None:
    draft = _fold(proto.AgentResponse("", 2))
    assert proto.is_complete(draft)
    assert proto.answer_text(draft) == ""


def test_streamed_parts_wait_for_the_stop_when_the_response_comes_first() -> None:
    draft = _fold(
        proto.ResponsePart("start", "", 4),
        proto.ResponsePart("delta", "Hel", 4),
        proto.ResponsePart("delta", "lo", 4),
        proto.AgentResponse("Hello!", 4),
    )
    assert not proto.is_complete(draft)
    draft = proto.fold(draft, proto.ResponsePart("stop", "", 4))
    assert proto.is_complete(draft)
    # The agent_response is the authoritative text and overwrites the streamed one.
    assert proto.answer_text(draft) == "Hello!"
    assert draft.streamed_parts == 2


def test_a_stopped_stream_still_waits_for_the_agent_response() -> None:
    draft = _fold(
        proto.ResponsePart("start", "", 4),
        proto.ResponsePart("delta", "Hello", 4),
        proto.ResponsePart("stop", "", 4),
    )
    assert not proto.is_complete(draft)
    assert proto.answer_text(draft) == "Hello"
    assert "agent_response" in proto.explain_unfinished(draft)
    assert proto.is_complete(proto.fold(draft, proto.AgentResponse("Hello", 4)))


def test_a_correction_during_the_turn_replaces_the_text() -> None:
    draft = _fold(proto.AgentResponse("Hello there", 5), proto.Correction("Hello there", "Hel", 5))
    assert proto.answer_text(draft) == "Hel"
    assert proto.is_corrected(draft)


def test_a_correction_without_event_id_applies_to_the_latest_segment() -> None:
    draft = _fold(proto.AgentResponse("Hello", 5), proto.Correction("Hello", "Bye", None))
    assert proto.answer_text(draft) == "Bye"


def test_a_correction_for_an_answer_this_turn_has_not_seen_is_stale() -> None:
    draft = _fold(proto.Correction("old", "older", 3), proto.AgentResponse("new", 5))
    assert proto.answer_text(draft) == "new"
    assert not proto.is_corrected(draft)
    assert draft.stale_frames == 1


def test_frames_of_an_earlier_turn_are_not_part_of_the_answer() -> None:
    draft = _fold(
        proto.AgentResponse("late answer to the last turn", 3),
        proto.ResponsePart("delta", "late", 3),
        stale_up_to=3,
    )
    assert not proto.is_complete(draft)
    assert draft.stale_frames == 2
    draft = proto.fold(draft, proto.AgentResponse("this answer", 4))
    assert proto.answer_text(draft) == "this answer"


def test_a_tool_call_makes_the_turn_wait_for_the_answer_after_it() -> None:
    draft = _fold(proto.AgentResponse("Let me check.", 6), proto.ClientToolCall("t", "x", 6))
    assert not proto.is_complete(draft)
    assert "tool" in proto.explain_unfinished(draft)
    draft = proto.fold(draft, proto.AgentResponse("I cannot do that here.", 7))
    assert proto.is_complete(draft)
    assert proto.answer_text(draft) == "Let me check.\n\nI cannot do that here."
    assert proto.answer_event_id(draft) == 7


def test_the_widget_tool_turn_order_completes_after_the_second_response() -> None:
    # The official widget mock: start, response, tool request, stop, tool response, then a
    # new stream and the final response under the same event id.
    draft = _fold(
        proto.ResponsePart("start", "", 9),
        proto.AgentResponse("Checking.", 9),
        proto.ToolActivity("request", "lookup", 9),
        proto.ResponsePart("stop", "", 9),
        proto.ToolActivity("response", "lookup", 9),
        proto.ResponsePart("start", "", 9),
        proto.ResponsePart("delta", "Found it.", 9),
        proto.ResponsePart("stop", "", 9),
    )
    assert not proto.is_complete(draft)
    draft = proto.fold(draft, proto.AgentResponse("Found it.", 9))
    assert proto.is_complete(draft)
    assert proto.answer_text(draft) == "Found it."


def test_end_call_does_not_wait_for_more() -> None:
    draft = _fold(
        proto.AgentResponse("Goodbye!", 3),
        proto.ToolActivity("request", "end_call", 3),
        proto.ToolActivity("response", "end_call", 3),
    )
    assert proto.is_complete(draft)


def test_agent_response_complete_ends_the_turn() -> None:
    draft = _fold(proto.ResponsePart("start", "", 2), proto.ResponseComplete(2))
    assert proto.is_complete(draft)


def test_highest_event_id_covers_the_turn_and_the_stale_boundary() -> None:
    assert proto.highest_event_id(proto.TurnDraft()) is None
    assert proto.highest_event_id(proto.TurnDraft(stale_up_to=4)) == 4
    assert proto.highest_event_id(_fold(proto.AgentResponse("a", 6), stale_up_to=4)) == 6


def test_nothing_arrived_is_explained() -> None:
    assert proto.explain_unfinished(proto.TurnDraft()) == "the agent sent nothing for this turn"
    assert "never stopped" in proto.explain_unfinished(_fold(proto.ResponsePart("start", "", 1)))


# --- closes ----------------------------------------------------------------------------------


def test_1008_override_error_names_the_security_tab_and_is_final() -> None:
    error = proto.ServerError("override_error", 1008, "Override for field(s) x is not allowed")
    cause = proto.explain_close(1008, "Override for field(s) x is not allowed", error)
    assert not cause.retryable
    assert "enable the text_only override in the agent's Security tab" in cause.cause
    assert "Override for field(s) x is not allowed" in cause.cause


def test_1008_missing_variable_names_the_variable() -> None:
    message = "Missing required dynamic variables: call_summary, user_name"
    cause = proto.explain_close(
        1008, message, proto.ServerError("missing_dynamic_variable", 1008, message)
    )
    assert not cause.retryable
    assert "(call_summary, user_name)" in cause.cause
    assert "dynamic_variables" in cause.cause


def test_1008_without_an_error_event_lists_both_likely_causes() -> None:
    cause = proto.explain_close(1008, None, None)
    assert not cause.retryable
    assert "Security tab" in cause.cause
    assert "dynamic variable" in cause.cause


def test_max_duration_and_idle_are_worth_a_reopen() -> None:
    duration = proto.ServerError("max_duration_exceeded", 1000, "Maximum duration exceeded")
    idle = proto.ServerError("transport_receive_timeout", 1002, "No user input for 60 seconds")
    assert proto.explain_close(1000, "Maximum duration exceeded", duration) == proto.CloseCause(
        "the session reached the agent's maximum duration; the server said: "
        "'Maximum duration exceeded'; reopen it",
        retryable=True,
    )
    idle_cause = proto.explain_close(1002, "No user input for 60 seconds", idle)
    assert idle_cause.retryable
    assert "idle" in idle_cause.cause


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (1000, "ended the session normally"),
        (1002, "error"),
        (1011, "failed internally"),
        (1006, "lost"),
        (None, "lost"),
        (3008, "concurrency"),
        (4321, "code 4321"),
    ],
)
def test_other_closes_are_retryable(code: int | None, words: str) -> None:
    cause = proto.explain_close(code, None, None)
    assert cause.retryable
    assert words in cause.cause


@pytest.mark.parametrize(
    ("message", "names"),
    [
        ("Missing required dynamic variables: call_summary", ("call_summary",)),
        ("Missing required dynamic variable: a, b.", ("a", "b")),
        ("Missing dynamic variable 'user_name' in prompt", ("user_name",)),
        ("Missing dynamic variable {{call_summary}}", ("call_summary",)),
        ("Something went wrong", ()),
    ],
)
def test_missing_variable_names(message: str, names: tuple[str, ...]) -> None:
    assert proto.missing_variable_names(message) == names
