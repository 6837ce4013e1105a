"""The call monitor: finds the agent's finished batch calls by polling ElevenLabs.

The post-call webhook is the fast path; the monitor is the path that does not depend on a
webhook being configured, reachable and delivered. Every ``poll_seconds`` it lists the
agent's recent batches, and for each batch the log does not show as finished it fetches the
recipients. A recipient that reached ``completed`` has its conversation fetched (waiting,
pass after pass, while ElevenLabs is still ``processing`` it) and becomes a ``CallCompleted``
in the phone's stream, under the same id the webhook uses: whichever comes first wins, the
other append is a no-op. ``voicemail`` and ``failed`` recipients become ``CallFailed``,
``cancelled`` ones are only noted. The phone actor is woken for each new ``CallCompleted``.

Progress lives in the log (``events.batches``), not in memory: ``RecipientSettled`` per
recipient call, ``BatchFinished`` per batch, ``CallMonitorStarted`` once per agent. A
restarted monitor folds a batch's stream before deciding, so it neither processes a
recipient twice nor misses one that finished while it was down. Each fact has a derived id,
so the CLI (``aftercall batch process``) and the monitor can work on the same batch.

The monitor is one actor (id: the agent id) in its own actor system, woken by its own
timer. ElevenLabs or the log being unavailable makes it wait longer before the next poll
(doubling, honouring ``Retry-After``, up to ``max_backoff``); a crash is restarted by the
supervisor, without a limit, because a stopped monitor would silently stop follow-ups.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import attrs
import trio

from actors.runtime import ActorContext, ActorSettings, ActorSystem, open_actor_system
from actors.supervision import SupervisionPolicy
from clients.elevenlabs.api import (
    BatchDetail,
    BatchSummary,
    ElevenLabsAPI,
    ElevenLabsError,
    ElevenLabsNotFound,
    ElevenLabsUnavailable,
    MalformedResponse,
    Recipient,
)
from events.batches import (
    BatchFinished,
    BatchSeen,
    CallMonitorStarted,
    CallRecord,
    MonitorSource,
    RecipientOutcome,
    RecipientSettled,
    batch_finished_id,
    batch_seen_id,
    batch_stream,
    monitor_started_id,
    monitor_stream,
    recipient_settled_id,
)
from events.calls import CallCompleted, CallFailed, call_event_id
from events.codec import decode, to_new_event
from events.conversation import phone_stream
from events.store import EventStore, EventStoreError
from followup.call_rules import (
    AlreadySettled,
    BatchProgress,
    FetchConversation,
    InvalidCallData,
    NotAPhoneCall,
    NotFinished,
    SettleAsIs,
    StillCalling,
    apply_batch_event,
    batch_is_finished,
    call_from_conversation,
    decide_recipient,
    failed_call,
    fold_batch,
    outcome_counts,
    poll_delay,
    recipient_phone,
    worth_a_look,
)
from followup.control import fold_conversation
from followup.conversation import skip_reason

logger = logging.getLogger(__name__)

#: On its very first run for an agent the monitor also takes batches created this long
#: before: calls made while aftercall was being set up are followed up, older ones are not
#: (``aftercall batch process BATCH_ID`` takes any batch on purpose).
FIRST_START_LOOKBACK = timedelta(hours=1)
#: Pages of the batch list read per poll (100 batches each), newest first.
MAX_LIST_PAGES = 10


def _utc_now() -> datetime:
    return datetime.now(UTC)


@attrs.frozen
class Poll:
    """Look at ElevenLabs now.

    ``reason`` ``"start"`` only activates the monitor, whose ``activate`` arms the first
    poll itself (it must, to resume after a restart, when no message comes).
    """

    reason: Literal["timer", "start", "asked"] = "timer"


@attrs.frozen
class MonitorSettings:
    """How the monitor polls.

    Attributes:
        agent_id: The agent whose batches are followed.
        poll_seconds: Between two polls when all is well.
        max_backoff: Longest wait after failures.
        follow_up_failed_calls: Mark ``CallFailed`` for a WhatsApp follow-up (and wake the
            phone actor), as ``AFTERCALL_FOLLOW_UP_FAILED_CALLS`` asks.
        fetch_concurrency: Conversations fetched at once within one batch.
    """

    agent_id: str
    poll_seconds: float
    max_backoff: float = 300.0
    follow_up_failed_calls: bool = False
    fetch_concurrency: int = 32


@attrs.frozen
class BatchWork:
    """What processing a batch needs besides the batch: shared by the monitor and the CLI."""

    store: EventStore
    api: ElevenLabsAPI
    notify_phone: Callable[[str], object]
    source: MonitorSource = "batch_monitor"
    follow_up_failed_calls: bool = False
    fetch_concurrency: int = 32
    wall_clock: Callable[[], datetime] = _utc_now


RecipientResult = Literal[
    "settled_before",  # the log already had it: nothing done
    "calling",  # the call has not ended
    "processing",  # ended, ElevenLabs is still analysing it
    "recorded",  # the call's event was appended by this pass
    "already_recorded",  # the call's event was there (the webhook was first)
    "settled",  # recorded in the batch only (cancelled, no conversation, no phone)
    "error",  # this recipient could not be read; tried again on the next pass
]


@attrs.frozen
class RecipientReport:
    recipient_id: str
    status: str
    phone: str | None
    conversation_id: str | None
    result: RecipientResult
    detail: str = ""


@attrs.frozen
class BatchReport:
    """What one look at a batch did, recipient by recipient (printed by the CLI)."""

    batch: BatchSummary
    recipients: tuple[RecipientReport, ...]
    finished: bool
    #: Phones whose ``CallCompleted`` (or followed-up ``CallFailed``) this pass appended.
    followed_up: tuple[str, ...]


# --- processing one batch (the monitor and ``aftercall batch process``) -----------------------


async def load_progress(store: EventStore, batch_id: str) -> BatchProgress:
    """Fold the batch's stream: what was already done for it."""
    return fold_batch(
        batch_id, (decode(r) for r in await store.read_stream(batch_stream(batch_id)))
    )


async def _record_batch_event(
    work: BatchWork, progress: BatchProgress, event: object, event_id: UUID
) -> None:
    await work.store.append(
        batch_stream(progress.batch_id), [to_new_event(event, event_id=event_id)]
    )
    apply_batch_event(progress, event)


async def process_batch(
    detail: BatchDetail, progress: BatchProgress, work: BatchWork
) -> BatchReport:
    """Record every recipient call of ``detail`` that ended and is not in ``progress`` yet.

    Idempotent: run it again (after a crash, from another process) and what was recorded is
    found, not recorded twice. ``progress`` is updated in place.

    Raises:
        ElevenLabsUnavailable: ElevenLabs stopped answering; nothing half-done is lost
            (what was appended stays, the rest is done on the next call).
    """
    batch = detail.batch
    now = work.wall_clock()
    if not progress.seen:
        seen = BatchSeen(
            batch_id=batch.id,
            agent_id=batch.agent_id,
            name=batch.name,
            recipients=len(detail.recipients),
            status=batch.status,
            created_at=datetime.fromtimestamp(batch.created_at_unix, UTC)
            if batch.created_at_unix
            else None,
            seen_at=now,
            source=work.source,
        )
        await _record_batch_event(work, progress, seen, batch_seen_id(batch.id))
    reports: list[RecipientReport | None] = [None] * len(detail.recipients)
    followed_up: list[str] = []
    limiter = trio.CapacityLimiter(max(1, work.fetch_concurrency))
    failures: list[ElevenLabsError | EventStoreError] = []

    async def settle(index: int, recipient: Recipient, cancel: trio.CancelScope) -> None:
        async with limiter:
            try:
                reports[index] = await _settle_recipient(
                    batch, recipient, progress, work, followed_up
                )
            except (ElevenLabsError, EventStoreError) as exc:
                # Stop the pass and raise this one error as itself, not in a group: the
                # monitor backs off on it; what was recorded stays, the rest waits.
                failures.append(exc)
                cancel.cancel()

    async with trio.open_nursery() as nursery:
        for index, recipient in enumerate(detail.recipients):
            nursery.start_soon(settle, index, recipient, nursery.cancel_scope)
    if failures:
        raise failures[0]
    finished = batch_is_finished(detail, progress)
    if finished and (
        progress.finished is None or progress.finished.retry_count < batch.retry_count
    ):
        counts = outcome_counts(detail, progress)
        done = BatchFinished(
            batch_id=batch.id,
            status=batch.status,
            retry_count=batch.retry_count,
            completed=counts["completed"],
            voicemail=counts["voicemail"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            finished_at=work.wall_clock(),
            source=work.source,
        )
        await _record_batch_event(
            work, progress, done, batch_finished_id(batch.id, batch.retry_count)
        )
    return BatchReport(
        batch=batch,
        recipients=tuple(r for r in reports if r is not None),
        finished=finished,
        followed_up=tuple(followed_up),
    )


async def _settle_recipient(
    batch: BatchSummary,
    recipient: Recipient,
    progress: BatchProgress,
    work: BatchWork,
    followed_up: list[str],
) -> RecipientReport:
    def report(result: RecipientResult, phone: str | None, detail: str = "") -> RecipientReport:
        return RecipientReport(
            recipient.id, recipient.status, phone, recipient.conversation_id, result, detail
        )

    step = decide_recipient(recipient, progress)
    phone = recipient_phone(recipient)
    match step:
        case AlreadySettled():
            before = progress.settled[(recipient.id, recipient.conversation_id)]
            return report("settled_before", before.phone, before.call_record)
        case StillCalling():
            return report("calling", phone)
        case SettleAsIs(outcome=outcome):
            event: CallCompleted | CallFailed | None = None
            if outcome in ("voicemail", "failed") and phone is not None:
                event = failed_call(recipient, batch, phone, outcome, work.source)
            detail = "" if phone is not None else "no usable phone number"
            return await _record(
                batch, recipient, progress, work, followed_up, outcome, event, phone, detail
            )
        case FetchConversation(conversation_id=conversation_id):
            try:
                conversation = await work.api.get_conversation(conversation_id)
            except ElevenLabsNotFound:
                return await _record(
                    batch, recipient, progress, work, followed_up, "completed", None, phone,
                    "the conversation is gone from ElevenLabs",
                )  # fmt: skip
            except MalformedResponse as exc:
                logger.warning("batch %s recipient %s: %s", batch.id, recipient.id, exc)
                return report("error", phone, str(exc))
            try:
                outcome_event = call_from_conversation(
                    conversation, source=work.source, require_done=True, fallback_phone=phone
                )
            except InvalidCallData as exc:
                logger.warning(
                    "batch %s recipient %s: conversation %s: %s",
                    batch.id, recipient.id, conversation_id, exc,
                )  # fmt: skip
                return report("error", phone, f"conversation {conversation_id}: {exc}")
            if isinstance(outcome_event, NotFinished):
                return report("processing", phone, f"conversation {outcome_event.status}")
            if isinstance(outcome_event, NotAPhoneCall):
                return await _record(
                    batch, recipient, progress, work, followed_up, "completed", None, phone,
                    outcome_event.reason,
                )  # fmt: skip
            # The batch knows which batch this was, whatever the conversation's metadata says.
            outcome_event = attrs.evolve(
                outcome_event, batch_id=batch.id, recipient_id=recipient.id
            )
            ended: RecipientOutcome = "completed"
            if isinstance(outcome_event, CallFailed):
                ended = "voicemail" if outcome_event.reason == "voicemail" else "failed"
            return await _record(
                batch, recipient, progress, work, followed_up, ended, outcome_event,
                outcome_event.phone, "",
            )  # fmt: skip
    raise AssertionError(f"unhandled step {step!r}")  # pragma: no cover


async def _record(
    batch: BatchSummary,
    recipient: Recipient,
    progress: BatchProgress,
    work: BatchWork,
    followed_up: list[str],
    outcome: RecipientOutcome,
    event: CallCompleted | CallFailed | None,
    phone: str | None,
    detail: str,
) -> RecipientReport:
    """The call's event in the phone's stream (if any), then the recipient in the batch's."""
    call_record: CallRecord = "none"
    if event is not None:
        if isinstance(event, CallFailed) and work.follow_up_failed_calls:
            event = attrs.evolve(event, follow_up=True)
        result = await work.store.append(
            phone_stream(event.phone),
            [to_new_event(event, event_id=call_event_id(event.conversation_id))],
        )
        call_record = "already_recorded" if result.duplicate else "recorded"
        wanted = isinstance(event, CallCompleted) or event.follow_up
        if not result.duplicate and wanted:
            # Opted out, unreachable or with a person: the phone actor records the skip in
            # the conversation; the batch's record says it too ("skipped: opted out").
            skipped = skip_reason(await fold_conversation(work.store, event.phone))
            if skipped is not None:
                detail = f"{detail}; {skipped}" if detail else skipped
            work.notify_phone(event.phone)
            followed_up.append(event.phone)
    settled = RecipientSettled(
        batch_id=batch.id,
        recipient_id=recipient.id,
        conversation_id=recipient.conversation_id,
        phone=phone,
        outcome=outcome,
        call_record=call_record,
        settled_at=work.wall_clock(),
        detail=detail or None,
        source=work.source,
    )
    await _record_batch_event(
        work,
        progress,
        settled,
        recipient_settled_id(batch.id, recipient.id, recipient.conversation_id),
    )
    result_name: RecipientResult = "settled" if call_record == "none" else call_record
    return RecipientReport(
        recipient.id, recipient.status, phone, recipient.conversation_id, result_name, detail
    )


# --- the monitor actor ----------------------------------------------------------------------


@attrs.define
class MonitorStatus:
    """The monitor's counters, kept across its restarts (for readiness and the admin view)."""

    agent_id: str
    polls: int = 0
    failures_in_a_row: int = 0
    last_error: str | None = None
    last_poll_at: datetime | None = None
    next_poll_in: float | None = None
    batches_followed: int = 0
    calls_recorded: int = 0


@attrs.frozen
class MonitorDependencies:
    settings: MonitorSettings
    api: ElevenLabsAPI
    notify_phone: Callable[[str], object]
    status: MonitorStatus
    wall_clock: Callable[[], datetime] = _utc_now


class CallMonitor:
    """One agent's monitor; made fresh by the runtime at every (re)start."""

    def __init__(self, agent_id: str, deps: MonitorDependencies) -> None:
        self.agent_id = agent_id
        self.deps = deps
        self.watching_since_unix = 0
        #: Folded progress of the batches looked at; a finished batch keeps only its end.
        self.progress: dict[str, BatchProgress] = {}

    async def activate(self, ctx: ActorContext[Poll]) -> None:
        self.watching_since_unix = await self._watching_since(ctx.store)
        ctx.set_timer("poll", 0, Poll())

    async def handle(self, message: Poll, ctx: ActorContext[Poll]) -> None:
        if message.reason == "start":
            return
        settings = self.deps.settings
        status = self.deps.status
        retry_after: float | None = None
        try:
            await self.poll_once(ctx.store)
        except (ElevenLabsError, EventStoreError) as exc:
            status.failures_in_a_row += 1
            status.last_error = str(exc)
            retry_after = exc.retry_after if isinstance(exc, ElevenLabsUnavailable) else None
            logger.warning(
                "call monitor (%s): poll failed %d time(s) in a row: %s",
                self.agent_id, status.failures_in_a_row, exc,
            )  # fmt: skip
        else:
            status.failures_in_a_row = 0
            status.last_error = None
        status.polls += 1
        status.last_poll_at = self.deps.wall_clock()
        delay = poll_delay(
            settings.poll_seconds, status.failures_in_a_row, retry_after, settings.max_backoff
        )
        status.next_poll_in = delay
        ctx.set_timer("poll", delay, Poll())

    async def deactivate(self, ctx: ActorContext[Poll]) -> None:
        """Nothing to close: the HTTP client belongs to the process."""

    async def poll_once(self, store: EventStore) -> list[BatchReport]:
        """One pass over the agent's recent batches, oldest first."""
        reports = []
        for summary in reversed(await self._recent_batches()):
            progress = self.progress.get(summary.id)
            if progress is None or (
                progress.finished is not None
                and worth_a_look(summary, progress, self.watching_since_unix)
            ):
                # Not looked at yet in this activation, or finished and then retried.
                progress = await load_progress(store, summary.id)
                self.progress[summary.id] = progress
            if not worth_a_look(summary, progress, self.watching_since_unix):
                self._forget_details(progress)
                continue
            detail = await self.deps.api.get_batch(summary.id)
            report = await process_batch(detail, progress, self._work(store))
            reports.append(report)
            self.deps.status.calls_recorded += sum(
                1 for r in report.recipients if r.result == "recorded"
            )
            if report.finished:
                self._forget_details(progress)
        self.deps.status.batches_followed = sum(
            1 for p in self.progress.values() if p.finished is None
        )
        return reports

    def _work(self, store: EventStore) -> BatchWork:
        settings = self.deps.settings
        return BatchWork(
            store=store,
            api=self.deps.api,
            notify_phone=self.deps.notify_phone,
            source="batch_monitor",
            follow_up_failed_calls=settings.follow_up_failed_calls,
            fetch_concurrency=settings.fetch_concurrency,
            wall_clock=self.deps.wall_clock,
        )

    def _forget_details(self, progress: BatchProgress) -> None:
        """A finished batch is only asked "retried since?": keep its end, drop the rest."""
        if progress.finished is not None:
            progress.settled.clear()

    async def _recent_batches(self) -> list[BatchSummary]:
        """The agent's batches, newest first, back to the monitor's first start."""
        found: list[BatchSummary] = []
        last_doc: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await self.deps.api.list_batches(self.agent_id, last_doc=last_doc)
            found.extend(page.batches)
            oldest = page.batches[-1] if page.batches else None
            if (
                not page.has_more
                or not page.next_doc
                or oldest is None
                or oldest.created_at_unix < self.watching_since_unix
            ):
                break
            last_doc = page.next_doc
        return found

    async def _watching_since(self, store: EventStore) -> int:
        """The first start's horizon, recorded once per agent (and read back ever after)."""
        stream = monitor_stream(self.agent_id)
        records = await store.read_stream(stream, limit=1)
        if not records:
            now = self.deps.wall_clock()
            started = CallMonitorStarted(
                agent_id=self.agent_id,
                watching_since=now - FIRST_START_LOOKBACK,
                started_at=now,
            )
            await store.append(
                stream, [to_new_event(started, event_id=monitor_started_id(self.agent_id))]
            )
            records = await store.read_stream(stream, limit=1)
        first = decode(records[0])
        assert isinstance(first, CallMonitorStarted)
        return int(first.watching_since.timestamp())


#: The monitor must not stay stopped: restart it forever, at most every five minutes.
MONITOR_SUPERVISION = SupervisionPolicy(
    max_restarts=1_000_000_000,
    within_seconds=60.0,
    backoff_initial=1.0,
    backoff_max=300.0,
    jitter=0.2,
    cooldown_seconds=300.0,
)


@attrs.define(eq=False)
class CallMonitorHandle:
    """The running monitor, as the composition root and the admin view see it."""

    agent_id: str
    actors: ActorSystem[Poll]
    status: MonitorStatus

    def poll_now(self) -> bool:
        """Ask for a poll now (e.g. after ``aftercall batch process`` elsewhere)."""
        return self.actors.notify(self.agent_id, Poll("asked"))


@asynccontextmanager
async def open_call_monitor(
    store: EventStore,
    api: ElevenLabsAPI,
    settings: MonitorSettings,
    notify_phone: Callable[[str], object],
    *,
    wall_clock: Callable[[], datetime] = _utc_now,
) -> AsyncIterator[CallMonitorHandle]:
    """Run the monitor for ``settings.agent_id`` until the block ends."""
    status = MonitorStatus(settings.agent_id)
    deps = MonitorDependencies(settings, api, notify_phone, status, wall_clock)

    def make(agent_id: str) -> CallMonitor:
        return CallMonitor(agent_id, deps)

    actor_settings = ActorSettings(
        idle_timeout=math.inf,  # it wakes itself with timers, which do not count as activity
        mailbox_size=4,
        supervision=MONITOR_SUPERVISION,
    )
    async with open_actor_system(make, store, actor_settings) as actors:
        await actors.tell(settings.agent_id, Poll("start"))
        yield CallMonitorHandle(settings.agent_id, actors, status)
