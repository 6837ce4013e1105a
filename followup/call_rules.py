"""How a finished ElevenLabs call becomes a fact in the log: the rules, as plain functions.

Two paths report the same calls: the post-call webhook (``web.post_call``) and the batch
monitor (``followup.call_monitor``). Both read the same conversation model (the webhook's
``data`` is what ``GET /v1/convai/conversations/{id}`` returns) through
``call_from_conversation``, so whichever path comes first records the same
``CallCompleted`` (or ``CallFailed``) under the same id (``events.calls.call_event_id``),
and the other one's append is a no-op.

Decisions the rules make, and why:

* The phone is ``metadata.phone_call.external_number`` (the person's number, whichever way
  the call went), normalised to E.164. A conversation without a phone call (a web widget, a
  WhatsApp conversation, and the text sessions aftercall itself opens for each follow-up,
  which ElevenLabs reports with the same webhook) is not a call to follow up: it is ignored,
  never an error, because ElevenLabs disables a webhook that keeps failing.
* A call that reached voicemail is a ``CallFailed`` with reason ``voicemail``, on both paths:
  the batch says so in the recipient's status, the webhook only in ``termination_reason``.
* Dynamic variables are kept except ElevenLabs' own ``system__*`` ones and values that are
  not scalars: they are handed to the follow-up's agent session, which must not claim to be
  the phone call (``system__conversation_id``) or be refused for a nested value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeGuard

import attrs

from clients.elevenlabs.api import BatchDetail, BatchSummary, Recipient
from events.batches import BatchFinished, BatchSeen, RecipientOutcome, RecipientSettled
from events.calls import CallCompleted, CallFailed, CallSource, DynamicValue, TranscriptLine
from events.phones import InvalidPhone, identity_phone

#: ``call_initiation_failure.failure_reason`` values the reference documents.
FAILURE_REASONS = frozenset({"busy", "no-answer", "unknown"})
#: Conversation statuses before the post-call analysis is done.
UNFINISHED_CONVERSATION = frozenset({"initiated", "in-progress", "processing"})
#: Recipient statuses of a call that has not ended yet.
RECIPIENT_IN_FLIGHT = frozenset({"pending", "dispatched", "initiated", "in_progress"})
#: Recipient statuses recorded without fetching the conversation.
RECIPIENT_SETTLED_AS_IS: frozenset[str] = frozenset({"voicemail", "failed", "cancelled"})


class InvalidCallData(ValueError):
    """A webhook or conversation that lacks what every call has (ids, an object)."""


@attrs.frozen
class NotFinished:
    """The conversation is still going or being analysed: look again later."""

    conversation_id: str
    status: str


@attrs.frozen
class NotAPhoneCall:
    """Nothing to follow up on WhatsApp (no phone call, or no usable number)."""

    conversation_id: str
    reason: str


CallOutcome = CallCompleted | CallFailed | NotFinished | NotAPhoneCall


# --- conversation JSON -> event ------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _required(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidCallData(f"data.{key} is missing or not a string")
    return value.strip()


def phone_of_conversation(data: Mapping[str, Any]) -> str | None:
    """``metadata.phone_call.external_number``, raw (``None`` if there is no phone call)."""
    phone_call = _mapping(_mapping(data.get("metadata")).get("phone_call"))
    number = phone_call.get("external_number")
    return number if isinstance(number, str) and number.strip() else None


def transcript_of(data: Mapping[str, Any]) -> tuple[TranscriptLine, ...]:
    """The spoken lines; turns without text (tool calls, silence) are left out."""
    lines = []
    transcript = data.get("transcript")
    for entry in transcript if isinstance(transcript, list) else []:
        entry = _mapping(entry)
        role, message = entry.get("role"), entry.get("message")
        if role in ("agent", "user") and isinstance(message, str) and message.strip():
            lines.append(TranscriptLine(role, message.strip()))
    return tuple(lines)


def dynamic_variables_of(data: Mapping[str, Any]) -> dict[str, DynamicValue]:
    initiation = _mapping(data.get("conversation_initiation_client_data"))
    variables = _mapping(initiation.get("dynamic_variables"))
    return {
        str(key): value
        for key, value in variables.items()
        if not str(key).startswith("system__") and isinstance(value, str | int | float | bool)
    }


def is_voicemail(data: Mapping[str, Any]) -> bool:
    """Whether the call reached an answering machine (``termination_reason`` says so)."""
    reason = _mapping(data.get("metadata")).get("termination_reason")
    return isinstance(reason, str) and "voicemail" in reason.lower()


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ended_at(metadata: Mapping[str, Any]) -> datetime | None:
    start, duration = metadata.get("start_time_unix_secs"), metadata.get("call_duration_secs")
    if not _number(start):
        return None
    seconds = duration if _number(duration) else 0
    try:
        return datetime.fromtimestamp(float(start) + float(seconds), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def call_from_conversation(
    data: Mapping[str, Any],
    *,
    source: CallSource,
    require_done: bool = False,
    fallback_phone: str | None = None,
) -> CallOutcome:
    """The event a finished conversation becomes (or why it becomes none).

    ``require_done``: the monitor's case, where the conversation may still be in progress
    or being analysed (``NotFinished``); a ``post_call_transcription`` webhook is sent once
    the analysis is done. ``fallback_phone`` is the batch recipient's number, used when the
    conversation has no phone-call metadata.

    Raises:
        InvalidCallData: no ``conversation_id`` or ``agent_id``.
    """
    if not isinstance(data, Mapping):
        raise InvalidCallData("data must be a JSON object")
    conversation_id = _required(data, "conversation_id")
    agent_id = _required(data, "agent_id")
    status = data.get("status")
    if require_done and status in UNFINISHED_CONVERSATION:
        return NotFinished(conversation_id, str(status))
    raw_phone = phone_of_conversation(data) or fallback_phone
    if raw_phone is None:
        return NotAPhoneCall(conversation_id, "the conversation has no phone call")
    try:
        phone = identity_phone(raw_phone)
    except InvalidPhone as exc:
        return NotAPhoneCall(conversation_id, str(exc))
    metadata = _mapping(data.get("metadata"))
    batch_call = _mapping(metadata.get("batch_call"))
    batch_id = batch_call.get("batch_call_id")
    recipient_id = batch_call.get("batch_call_recipient_id")
    batch_id = batch_id if isinstance(batch_id, str) and batch_id else None
    recipient_id = recipient_id if isinstance(recipient_id, str) and recipient_id else None
    if status == "failed" or is_voicemail(data):
        return CallFailed(
            conversation_id=conversation_id,
            agent_id=agent_id,
            phone=phone,
            reason="voicemail" if is_voicemail(data) else "failed",
            batch_id=batch_id,
            recipient_id=recipient_id,
            source=source,
        )
    summary = _mapping(data.get("analysis")).get("transcript_summary")
    return CallCompleted(
        conversation_id=conversation_id,
        agent_id=agent_id,
        phone=phone,
        summary=summary.strip() if isinstance(summary, str) else "",
        transcript=transcript_of(data),
        dynamic_variables=dynamic_variables_of(data),
        batch_id=batch_id,
        recipient_id=recipient_id,
        ended_at=_ended_at(metadata),
        source=source,
    )


def call_from_failure(data: Mapping[str, Any], *, source: CallSource) -> CallFailed | NotAPhoneCall:
    """A ``call_initiation_failure`` webhook's ``data`` (busy, no answer, unknown).

    The callee is ``To`` in a Twilio status body, ``to_number`` in a SIP one.
    """
    if not isinstance(data, Mapping):
        raise InvalidCallData("data must be a JSON object")
    conversation_id = _required(data, "conversation_id")
    agent_id = _required(data, "agent_id")
    reason = data.get("failure_reason")
    body = _mapping(_mapping(data.get("metadata")).get("body"))
    raw_phone = body.get("To") or body.get("to_number")
    if not isinstance(raw_phone, str) or not raw_phone.strip():
        return NotAPhoneCall(conversation_id, "the failure names no called number")
    try:
        phone = identity_phone(raw_phone)
    except InvalidPhone as exc:
        return NotAPhoneCall(conversation_id, str(exc))
    return CallFailed(
        conversation_id=conversation_id,
        agent_id=agent_id,
        phone=phone,
        reason=reason if reason in FAILURE_REASONS else "unknown",
        source=source,
    )


# --- a batch's progress, folded from its stream -----------------------------------------------

SettledKey = tuple[str, str | None]


@attrs.define
class BatchProgress:
    """What the log says was done for one batch (``batch-<id>``)."""

    batch_id: str
    seen: bool = False
    settled: dict[SettledKey, RecipientSettled] = attrs.field(factory=dict)
    finished: BatchFinished | None = None
    version: int = 0

    def is_settled(self, recipient: Recipient) -> bool:
        return (recipient.id, recipient.conversation_id) in self.settled

    def settled_for(self, recipient_id: str) -> RecipientSettled | None:
        """The latest settlement of a recipient (after a retry, the newest call)."""
        found = None
        for (rid, _), settled in self.settled.items():
            if rid == recipient_id:
                found = settled
        return found


def apply_batch_event(progress: BatchProgress, event: Any) -> None:
    match event:
        case BatchSeen():
            progress.seen = True
        case RecipientSettled():
            progress.settled[(event.recipient_id, event.conversation_id)] = event
        case BatchFinished():
            progress.finished = event
        case _:
            pass


def fold_batch(batch_id: str, events: Iterable[Any]) -> BatchProgress:
    progress = BatchProgress(batch_id)
    for event in events:
        apply_batch_event(progress, event)
    return progress


# --- decisions about a batch --------------------------------------------------------------------


@attrs.frozen
class AlreadySettled:
    recipient: Recipient


@attrs.frozen
class StillCalling:
    recipient: Recipient


@attrs.frozen
class FetchConversation:
    """The call was answered and ended: its conversation holds the transcript and summary."""

    recipient: Recipient
    conversation_id: str


@attrs.frozen
class SettleAsIs:
    """Voicemail, failed or cancelled: recorded from the recipient alone."""

    recipient: Recipient
    outcome: RecipientOutcome


RecipientStep = AlreadySettled | StillCalling | FetchConversation | SettleAsIs


def decide_recipient(recipient: Recipient, progress: BatchProgress) -> RecipientStep:
    """The next thing to do for one recipient of a batch."""
    if progress.is_settled(recipient):
        return AlreadySettled(recipient)
    status = recipient.status
    if status == "completed" and recipient.conversation_id:
        return FetchConversation(recipient, recipient.conversation_id)
    if status == "completed":
        return SettleAsIs(recipient, "completed")  # nothing to fetch: record it as it is
    if status in RECIPIENT_SETTLED_AS_IS:
        outcome: RecipientOutcome = status  # type: ignore[assignment]  # narrowed by the set
        return SettleAsIs(recipient, outcome)
    # pending ... in_progress, or a status newer than the reference: wait for a known end
    return StillCalling(recipient)


def recipient_phone(recipient: Recipient) -> str | None:
    """The recipient's identity (``events.phones.identity_phone``), or ``None`` if it has no
    number we can use."""
    for raw in (recipient.phone_number, recipient.whatsapp_user_id):
        if raw:
            try:
                return identity_phone(raw)
            except InvalidPhone:
                continue
    return None


def failed_call(
    recipient: Recipient, batch: BatchSummary, phone: str, reason: str, source: CallSource
) -> CallFailed | None:
    """The ``CallFailed`` for a voicemail/failed recipient (none without a conversation)."""
    if recipient.conversation_id is None:
        return None
    return CallFailed(
        conversation_id=recipient.conversation_id,
        agent_id=batch.agent_id,
        phone=phone,
        reason=reason,
        batch_id=batch.id,
        recipient_id=recipient.id,
        source=source,
    )


def batch_is_finished(detail: BatchDetail, progress: BatchProgress) -> bool:
    """ElevenLabs says the batch is over, and every recipient's end is in the log."""
    return detail.batch.terminal and all(progress.is_settled(r) for r in detail.recipients)


def outcome_counts(detail: BatchDetail, progress: BatchProgress) -> dict[str, int]:
    counts = {"completed": 0, "voicemail": 0, "failed": 0, "cancelled": 0}
    for recipient in detail.recipients:
        settled = progress.settled.get((recipient.id, recipient.conversation_id))
        if settled is not None:
            counts[settled.outcome] += 1
    return counts


def worth_a_look(batch: BatchSummary, progress: BatchProgress, watching_since_unix: int) -> bool:
    """Whether the monitor fetches this batch's recipients on this pass.

    Not when the log says it is finished (unless ElevenLabs retried it since), and not when
    it is older than the monitor's first start (unless it was already being followed).
    """
    if progress.finished is not None:
        retried = batch.retry_count > progress.finished.retry_count
        if not retried and batch.terminal:
            return False
    return progress.seen or batch.created_at_unix >= watching_since_unix


def poll_delay(
    interval: float, failures: int, retry_after: float | None = None, maximum: float = 300.0
) -> float:
    """Seconds until the next poll: the interval, doubled per consecutive failure.

    ``Retry-After`` is honoured (within ``maximum``), so a rate-limited monitor asks no
    sooner than it was told to.
    """
    if failures <= 0:
        return interval
    ceiling = max(maximum, interval)
    delay = min(ceiling, interval * 2.0 ** min(failures, 32))
    if retry_after is not None:
        delay = max(delay, min(retry_after, ceiling))
    return delay
