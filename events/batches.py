"""The call monitor's progress through ElevenLabs batch calls, in the log.

The monitor (``followup.call_monitor``) polls ElevenLabs for the agent's batches. What it has
done is recorded here, so a restart resumes exactly where it stopped:

* ``callmonitor-<agent_id>``: ``CallMonitorStarted`` once, the first time a monitor ran for
  the agent. Its ``watching_since`` is the oldest batch the monitor looks at, ever: a fresh
  install does not send WhatsApp messages to everyone its agent ever called.
* ``batch-<batch_id>``: ``BatchSeen`` when the monitor (or ``aftercall batch process``) first
  looks at a batch, one ``RecipientSettled`` per recipient call that reached an end, and
  ``BatchFinished`` once the batch is over and every recipient is settled. A finished batch
  is never fetched again (unless ElevenLabs retries it).

Every event here has an id derived from what it is about, so two writers (the monitor and
the CLI, or a monitor restarted mid-pass) record each fact once: the second append is a
no-op. The call itself (``CallCompleted``/``CallFailed``) goes to the phone's stream with
``events.calls.call_event_id``; ``RecipientSettled`` is written after it, so a crash between
the two only means the call's append is tried again, and found already there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import attrs

from events.codec import derived_id, event_type

#: Stream categories.
BATCH_CATEGORY = "batch"
MONITOR_CATEGORY = "callmonitor"

#: How a recipient's call ended, as the batch reports it.
RecipientOutcome = Literal["completed", "voicemail", "failed", "cancelled"]
#: What happened to the call's event in the phone's stream:
#: ``recorded`` by this writer, ``already_recorded`` (the webhook or an earlier pass was
#: first), or ``none`` (no conversation, no phone number, or nothing to record).
CallRecord = Literal["recorded", "already_recorded", "none"]
MonitorSource = Literal["batch_monitor", "cli", "test"]


def batch_stream(batch_id: str) -> str:
    """``btcal_...`` -> ``batch-btcal_...``."""
    return f"{BATCH_CATEGORY}-{batch_id}"


def monitor_stream(agent_id: str) -> str:
    """``agent_...`` -> ``callmonitor-agent_...``."""
    return f"{MONITOR_CATEGORY}-{agent_id}"


@event_type
@attrs.frozen
class CallMonitorStarted:
    """A call monitor ran for this agent for the first time.

    Batches created before ``watching_since`` are left alone by the monitor (``aftercall
    batch process BATCH_ID`` handles one of them on purpose).
    """

    agent_id: str
    watching_since: datetime
    started_at: datetime


@event_type
@attrs.frozen
class BatchSeen:
    """A batch of the agent was looked at for the first time."""

    batch_id: str
    agent_id: str
    name: str
    recipients: int
    status: str
    created_at: datetime | None
    seen_at: datetime
    source: MonitorSource = "batch_monitor"


@event_type
@attrs.frozen
class RecipientSettled:
    """One recipient's call of a batch reached its end and was dealt with.

    Keyed by ``conversation_id`` as well as ``recipient_id``: a batch retry calls a
    recipient again, with a new conversation, which is settled again.
    """

    batch_id: str
    recipient_id: str
    conversation_id: str | None
    phone: str | None
    outcome: RecipientOutcome
    call_record: CallRecord
    settled_at: datetime
    detail: str | None = None
    source: MonitorSource = "batch_monitor"


@event_type
@attrs.frozen
class BatchFinished:
    """The batch is over (as ElevenLabs says) and every recipient is settled.

    ``retry_count`` is the batch's at the time: a retried batch is looked at again.
    """

    batch_id: str
    status: str
    retry_count: int
    completed: int
    voicemail: int
    failed: int
    cancelled: int
    finished_at: datetime
    source: MonitorSource = "batch_monitor"


def monitor_started_id(agent_id: str) -> UUID:
    return derived_id("call-monitor-started", agent_id)


def batch_seen_id(batch_id: str) -> UUID:
    return derived_id("batch-seen", batch_id)


def recipient_settled_id(batch_id: str, recipient_id: str, conversation_id: str | None) -> UUID:
    return derived_id("batch-recipient", batch_id, recipient_id, conversation_id or "-")


def batch_finished_id(batch_id: str, retry_count: int) -> UUID:
    return derived_id("batch-finished", batch_id, str(retry_count))
