"""The stand-in's rules as plain functions: no sockets, no clock."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from sandbox.elevenlabs import CallScript, CallTiming, SessionContext, Turn, scripted_brain, sign
from sandbox.elevenlabs._brain import context_brain
from sandbox.elevenlabs._calls import plan_call
from sandbox.elevenlabs._protocol import (
    ERROR_CLOSE_CODES,
    ClientMessage,
    ProtocolViolation,
    check_initiation,
    effective_contextual_updates,
    override_paths,
    parse_client_frame,
    render_template,
    requested_text_only,
    stream_parts,
)


def test_error_table_codes() -> None:
    assert ERROR_CLOSE_CODES["invalid_message"] == 1008
    assert ERROR_CLOSE_CODES["override_error"] == 1008
    assert ERROR_CLOSE_CODES["transport_receive_timeout"] == 1002
    assert ERROR_CLOSE_CODES["max_duration_exceeded"] == 1000
    assert ERROR_CLOSE_CODES["unknown_websocket_crash"] == 1011


def test_parse_client_frames() -> None:
    assert parse_client_frame('{"user_audio_chunk": "AA=="}') == ClientMessage(
        "user_audio_chunk", {"user_audio_chunk": "AA=="}
    )
    assert parse_client_frame('{"type": "user_message", "text": null}') == ClientMessage(
        "user_message", {"type": "user_message", "text": None}
    )
    violation = parse_client_frame('{"type": "feedback"}')
    assert violation == ProtocolViolation(
        "missing_fields", "feedback is missing required field(s): event_id"
    )
    assert isinstance(violation, ProtocolViolation)
    assert violation.close_code == 1008


def test_override_paths_both_text_only_placements_and_empty_values() -> None:
    sdk_style = {"conversation_config_override": {"text_only": True}, "custom_llm_extra_body": {}}
    js_style = {
        "conversation_config_override": {
            "agent": {"prompt": {"prompt": "p", "llm": None}},
            "tts": {},
            "conversation": {"text_only": False},
        }
    }
    assert override_paths(sdk_style) == {"conversation.text_only"}
    assert override_paths(js_style) == {"agent.prompt.prompt", "conversation.text_only"}
    assert requested_text_only(sdk_style) is True
    assert requested_text_only(js_style) is False
    assert override_paths({"custom_llm_extra_body": {"x": 1}}) == {"custom_llm_extra_body"}


def test_check_initiation_order_and_types() -> None:
    allowed = frozenset({"conversation.text_only"})
    required = frozenset({"call_summary"})
    forbidden = {"conversation_config_override": {"agent": {"language": "fr"}}}
    check = check_initiation(forbidden, allowed, required)
    assert check is not None
    assert check.error_type == "override_error"
    missing = check_initiation({"dynamic_variables": {}}, allowed, required)
    assert missing is not None
    assert missing.error_type == "missing_dynamic_variable"
    bad_type = check_initiation({"dynamic_variables": {"call_summary": [1]}}, allowed, required)
    assert bad_type is not None
    assert bad_type.error_type == "value_error"
    ok = {"dynamic_variables": {"call_summary": "s", "n": 3, "vip": True}}
    assert check_initiation(ok, allowed, required) is None


def test_templates_updates_and_stream_parts() -> None:
    assert render_template("Hi {{ name }}, {{vip}} {{missing}}", {"name": "Ana", "vip": True}) == (
        "Hi Ana, true {{missing}}"
    )
    updates = [("a", "old"), (None, "kept"), ("a", "new")]
    assert effective_contextual_updates(updates) == ("kept", "new")
    assert stream_parts("Hello  there world") == ["Hello  ", "there ", "world"]
    assert stream_parts("") == [""]


def test_default_brain_rules() -> None:
    context = SessionContext(
        "agent",
        "conv",
        {"call_summary": "Sofa quote", "user_name": "Ana"},
        (("c", "Paid"),),
        (Turn("agent", "Hi"), Turn("user", "first")),
    )
    assert context_brain(context, "What did we DISCUSS?") == "We discussed: Sofa quote | Paid"
    assert context_brain(context, "what did I say?") == "You said: first"
    assert context_brain(context, "Do you know my name?") == "Your name is Ana."
    assert context_brain(context, "ok") == "You said: ok"
    brain = scripted_brain("a", "b")
    assert [brain(context, "x"), brain(SessionContext("agent", "conv"), "x")] == ["b", "a"]
    with pytest.raises(ValueError, match="at least one"):
        scripted_brain()


def test_call_plans() -> None:
    timing = CallTiming()
    completed = plan_call("completed", timing, 60, batch=True)
    assert [(s.offset, s.kind) for s in completed] == [
        (1.0, "initiated"),
        (6.0, "answered"),
        (36.0, "ended"),
        (41.0, "done"),
    ]
    no_answer = plan_call("no-answer", timing, 45, batch=False)
    assert [(s.offset, s.kind) for s in no_answer] == [(0.0, "initiated"), (45.0, "failed")]
    script = CallScript(outcomes=("no-answer", "completed"))
    assert [script.outcome_for_attempt(n) for n in range(3)] == [
        "no-answer",
        "completed",
        "completed",
    ]
    with pytest.raises(ValueError, match="outcomes"):
        CallScript(outcomes=("busy",))  # type: ignore[arg-type]


def test_signature_matches_the_documented_scheme() -> None:
    body = '{"type": "post_call_transcription"}'
    expected = hmac.new(b"wsec_x", f"1700000000.{body}".encode(), hashlib.sha256).hexdigest()
    assert sign(body, "wsec_x", 1700000000) == f"t=1700000000,v0={expected}"
