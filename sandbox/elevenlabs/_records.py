"""What the stand-in remembers (conversations, batches, recipients) and how it renders them.

Records are mutable because the service mutates them (a conversation goes ``in-progress`` ->
``processing`` -> ``done``); the JSON they render to is built by plain functions, with the
field names of the REST reference (§3, §4), so one place decides every wire shape.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

ConversationStatus = Literal["initiated", "in-progress", "processing", "done", "failed"]
BatchStatus = Literal["pending", "in_progress", "completed", "failed", "cancelled"]
RecipientStatus = Literal[
    "pending",
    "dispatched",
    "initiated",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
    "voicemail",
]
RECIPIENT_TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "voicemail"})


@attrs.frozen
class TranscriptEntry:
    role: Literal["user", "agent"]
    message: str
    time_in_call_secs: int
    source_medium: Literal["audio", "text"] = "text"


@attrs.frozen
class PhoneCallInfo:
    """``metadata.phone_call`` of a Twilio call: the callee is ``external_number``."""

    phone_number_id: str
    agent_number: str
    external_number: str
    call_sid: str
    direction: Literal["inbound", "outbound"] = "outbound"
    stream_sid: str | None = None


@attrs.frozen
class Analysis:
    call_successful: Literal["success", "failure", "unknown"]
    transcript_summary: str
    call_summary_title: str | None = None


@attrs.define
class ConversationRecord:
    """One conversation, whether it came from the WebSocket or from a phone call."""

    conversation_id: str
    agent_id: str
    agent_name: str
    status: ConversationStatus
    start_time_unix_secs: int
    initiation: dict[str, Any] = attrs.field(factory=dict)
    transcript: list[TranscriptEntry] = attrs.field(factory=list)
    call_duration_secs: int = 0
    user_id: str | None = None
    phone_call: PhoneCallInfo | None = None
    batch_call: tuple[str, str] | None = None
    whatsapp_user_id: str | None = None
    termination_reason: str = ""
    error: tuple[int, str | None] | None = None
    analysis: Analysis | None = None
    text_only: bool = False
    authorization_method: str = "public"
    source: str = "unknown"
    has_audio: bool = False


def transcript_entry_json(entry: TranscriptEntry, agent_id: str) -> dict[str, Any]:
    return {
        "role": entry.role,
        "time_in_call_secs": entry.time_in_call_secs,
        "message": entry.message,
        "agent_metadata": (
            {"agent_id": agent_id, "branch_id": None, "workflow_node_id": None, "version_id": None}
            if entry.role == "agent"
            else None
        ),
        "multivoice_message": None,
        "tool_calls": [],
        "tool_results": [],
        "feedback": None,
        "llm_override": None,
        "conversation_turn_metrics": None,
        "rag_retrieval_info": None,
        "llm_usage": None,
        "interrupted": False,
        "original_message": None,
        "source_medium": entry.source_medium,
        "contextual_update_info": None,
    }


def _phone_call_json(call: PhoneCallInfo) -> dict[str, Any]:
    return {
        "type": "twilio",
        "direction": call.direction,
        "phone_number_id": call.phone_number_id,
        "agent_number": call.agent_number,
        "external_number": call.external_number,
        "stream_sid": call.stream_sid,
        "call_sid": call.call_sid,
    }


def _initiation_json(record: ConversationRecord) -> dict[str, Any]:
    initiation = record.initiation
    return {
        "conversation_config_override": initiation.get("conversation_config_override") or {},
        "custom_llm_extra_body": initiation.get("custom_llm_extra_body") or {},
        "user_id": initiation.get("user_id"),
        "source_info": initiation.get("source_info") or {"source": record.source, "version": None},
        "branch_id": initiation.get("branch_id"),
        "environment": initiation.get("environment"),
        "starting_workflow_node_id": initiation.get("starting_workflow_node_id"),
        "procedure_ids": initiation.get("procedure_ids"),
        "dynamic_variables": initiation.get("dynamic_variables") or {},
    }


def conversation_json(record: ConversationRecord) -> dict[str, Any]:
    """``GetConversationResponseModel`` (§4); also the ``data`` of ``post_call_transcription``."""
    analysis = record.analysis
    return {
        "agent_id": record.agent_id,
        "agent_name": record.agent_name,
        "conversation_product": "agent",
        "status": record.status,
        "user_id": record.user_id,
        "branch_id": None,
        "version_id": None,
        "environment": "production",
        "conversation_id": record.conversation_id,
        "has_audio": record.has_audio,
        "has_user_audio": record.has_audio,
        "has_response_audio": record.has_audio,
        "has_auxiliary_audio": False,
        "transcript": [transcript_entry_json(e, record.agent_id) for e in record.transcript],
        "metadata": {
            "start_time_unix_secs": record.start_time_unix_secs,
            "call_duration_secs": record.call_duration_secs,
            "cost_fiat": None,
            "accepted_time_unix_secs": record.start_time_unix_secs,
            "cost": None,
            "deletion_settings": {
                "deletion_time_unix_secs": None,
                "deleted_logs_at_time_unix_secs": None,
                "deleted_audio_at_time_unix_secs": None,
                "deleted_transcript_at_time_unix_secs": None,
                "delete_transcript_and_pii": False,
                "delete_audio": False,
            },
            "feedback": {
                "type": None,
                "overall_score": None,
                "likes": 0,
                "dislikes": 0,
                "rating": None,
                "comment": None,
            },
            "authorization_method": record.authorization_method,
            "charging": {"dev_discount": False, "is_burst": False, "tier": None},
            "phone_call": _phone_call_json(record.phone_call) if record.phone_call else None,
            "batch_call": (
                {
                    "batch_call_id": record.batch_call[0],
                    "batch_call_recipient_id": record.batch_call[1],
                }
                if record.batch_call
                else None
            ),
            "termination_reason": record.termination_reason,
            "error": (
                {"code": record.error[0], "reason": record.error[1]} if record.error else None
            ),
            "warnings": [],
            "main_language": "en",
            "rag_usage": None,
            "text_only": record.text_only,
            "features_usage": {},
            "initiator_id": None,
            "conversation_initiation_source": record.source,
            "conversation_initiation_source_version": None,
            "timezone": None,
            "async_metadata": None,
            "whatsapp": (
                {
                    "direction": "outbound",
                    "whatsapp_phone_number_id": None,
                    "whatsapp_user_id": record.whatsapp_user_id,
                    "awaiting_first_user_message": None,
                }
                if record.whatsapp_user_id
                else None
            ),
            "sms": None,
        },
        "analysis": (
            {
                "call_successful": analysis.call_successful,
                "transcript_summary": analysis.transcript_summary,
                "evaluation_criteria_results": {},
                "data_collection_results": {},
                "evaluation_criteria_results_list": [],
                "data_collection_results_list": [],
                "call_success_score": None,
                "call_summary_title": analysis.call_summary_title,
                "scoped": [],
            }
            if analysis
            else None
        ),
        "visited_agents": [{"agent_id": record.agent_id, "branch_id": None}],
        "conversation_initiation_client_data": _initiation_json(record),
        "tag_ids": [],
        "otlp_traces": None,
    }


def conversation_summary_json(record: ConversationRecord, include_summary: bool) -> dict[str, Any]:
    """``ConversationSummaryResponseModel`` for the list endpoint.

    ``transcript_summary`` appears only with ``summary_mode=include``, as documented (the
    default is ``exclude``).
    """
    summary: dict[str, Any] = {
        "agent_id": record.agent_id,
        "agent_name": record.agent_name,
        "conversation_id": record.conversation_id,
        "start_time_unix_secs": record.start_time_unix_secs,
        "call_duration_secs": record.call_duration_secs,
        "message_count": len(record.transcript),
        "status": record.status,
        "call_successful": record.analysis.call_successful if record.analysis else "unknown",
        "termination_reason": record.termination_reason,
        "call_summary_title": record.analysis.call_summary_title if record.analysis else None,
        "direction": record.phone_call.direction if record.phone_call else None,
        "conversation_initiation_source": record.source,
        "main_language": "en",
        "tag_ids": [],
    }
    if include_summary:
        summary["transcript_summary"] = (
            record.analysis.transcript_summary if record.analysis else None
        )
    return summary


@attrs.define
class RecipientRecord:
    id: str
    phone_number: str | None
    whatsapp_user_id: str | None
    status: RecipientStatus
    created_at_unix: int
    updated_at_unix: int
    conversation_initiation_client_data: dict[str, Any] | None
    conversation_id: str | None = None

    @property
    def external_id(self) -> str:
        """The callee: phone number, else WhatsApp user id."""
        return self.phone_number or self.whatsapp_user_id or ""


@attrs.define
class BatchRecord:
    id: str
    name: str
    agent_id: str
    agent_name: str
    created_at_unix: int
    scheduled_time_unix: int
    recipients: list[RecipientRecord]
    phone_number_id: str | None = None
    whatsapp_params: dict[str, Any] | None = None
    branch_id: str | None = None
    environment: str | None = None
    timezone: str | None = None
    status: BatchStatus = "pending"
    retry_count: int = 0
    telephony_call_config: dict[str, Any] = attrs.field(
        factory=lambda: {"ringing_timeout_secs": 60, "twilio_call_recording_enabled": False}
    )
    target_concurrency_limit: int | None = None
    last_updated_at_unix: int = 0


def batch_json(batch: BatchRecord) -> dict[str, Any]:
    """``BatchCallResponse`` (§3): every key present, nullable where the schema says so."""
    recipients = batch.recipients
    return {
        "id": batch.id,
        "phone_number_id": batch.phone_number_id,
        "phone_provider": "twilio" if batch.phone_number_id else None,
        "whatsapp_params": batch.whatsapp_params,
        "name": batch.name,
        "agent_id": batch.agent_id,
        "branch_id": batch.branch_id,
        "environment": batch.environment,
        "created_at_unix": batch.created_at_unix,
        "scheduled_time_unix": batch.scheduled_time_unix,
        "timezone": batch.timezone,
        "total_calls_dispatched": sum(
            1
            for r in recipients
            if r.status not in ("pending", "cancelled") or r.conversation_id is not None
        ),
        "total_calls_scheduled": len(recipients),
        "total_calls_finished": sum(
            1 for r in recipients if r.status in ("completed", "failed", "voicemail")
        ),
        "last_updated_at_unix": batch.last_updated_at_unix,
        "status": batch.status,
        "retry_count": batch.retry_count,
        "telephony_call_config": batch.telephony_call_config,
        "target_concurrency_limit": batch.target_concurrency_limit,
        "agent_name": batch.agent_name,
        "branch_name": None,
    }


def recipient_json(recipient: RecipientRecord) -> dict[str, Any]:
    return {
        "id": recipient.id,
        "phone_number": recipient.phone_number,
        "whatsapp_user_id": recipient.whatsapp_user_id,
        "status": recipient.status,
        "created_at_unix": recipient.created_at_unix,
        "updated_at_unix": recipient.updated_at_unix,
        "conversation_id": recipient.conversation_id,
        "conversation_initiation_client_data": recipient.conversation_initiation_client_data,
    }


def batch_detailed_json(batch: BatchRecord) -> dict[str, Any]:
    """``BatchCallDetailedResponse``: the batch plus its recipients."""
    return batch_json(batch) | {"recipients": [recipient_json(r) for r in batch.recipients]}


def summarize_transcript(transcript: list[TranscriptEntry]) -> str:
    """The deterministic ``transcript_summary`` used when none was scripted.

    It quotes the user's lines so a test can check that they travelled: for example
    ``"The user said: Hello? | Yes, send it on WhatsApp. The agent answered 3 times."``
    """
    said = [e.message for e in transcript if e.role == "user"]
    answers = sum(1 for e in transcript if e.role == "agent")
    if not said:
        return f"The user said nothing. The agent spoke {answers} times."
    return f"The user said: {' | '.join(said)}. The agent answered {answers} times."
