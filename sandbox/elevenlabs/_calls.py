"""Simulated outbound phone calls: how each outcome unfolds over the stand-in's clock.

A call is planned in full when it is dispatched, as a list of steps at offsets from that
moment; the stand-in applies each step when ``advance()`` moves its clock past it. Planning
is a pure function of the outcome and the timings, so a test can say exactly when a
recipient will be ``in_progress`` and when its conversation will be ``done``.
"""

from __future__ import annotations

from typing import Literal

import attrs

Outcome = Literal["completed", "voicemail", "failed", "no-answer"]
OUTCOMES: frozenset[str] = frozenset({"completed", "voicemail", "failed", "no-answer"})

#: What each step does; applied by ``ElevenLabsStandIn`` (a batch recipient becomes
#: ``dispatched`` the moment a concurrency slot takes it, before any step):
#: ``initiated`` the conversation exists, status ``initiated``, the phone rings;
#: ``answered`` recipient ``in_progress``, conversation ``in-progress``;
#: ``ended`` the transcript is written, recipient ``completed``/``voicemail``, conversation
#: ``processing``;
#: ``done`` analysis written, conversation ``done``, ``post_call_transcription`` sent;
#: ``failed`` recipient and conversation ``failed``, ``call_initiation_failure`` sent.
StepKind = Literal["initiated", "answered", "ended", "done", "failed"]


@attrs.frozen
class CallTiming:
    """Seconds each phase takes on the stand-in's clock.

    Attributes:
        initiate_seconds: Batch recipient ``dispatched`` -> ``initiated``.
        answer_seconds: Ringing before the callee (or their voicemail) answers.
        fail_seconds: Ringing before a ``failed`` call gives up (busy, unreachable).
        talk_seconds: Length of an answered call.
        processing_seconds: How long a finished conversation stays ``processing`` (post-call
            analysis) before it is ``done`` and the webhook goes out. Applies to WebSocket
            sessions too.
    """

    initiate_seconds: float = 1.0
    answer_seconds: float = 5.0
    fail_seconds: float = 3.0
    talk_seconds: float = 30.0
    processing_seconds: float = 5.0


@attrs.frozen
class CallScript:
    """How calls to one number go.

    Attributes:
        outcomes: Outcome of the first call to the number, the second (for example a batch
            retry), and so on; the last one repeats.
        user_turns: What the callee says, one line per turn; the agent's brain answers each.
        summary: The ``analysis.transcript_summary``; ``None`` derives one from the
            transcript (see ``summarize_transcript``).
    """

    outcomes: tuple[Outcome, ...] = ("completed",)
    user_turns: tuple[str, ...] = ("Hello?", "Yes, please send me the details on WhatsApp.")
    summary: str | None = None

    def __attrs_post_init__(self) -> None:
        unknown = [o for o in self.outcomes if o not in OUTCOMES]
        if not self.outcomes or unknown:
            raise ValueError(f"outcomes must be a non-empty subset of {sorted(OUTCOMES)}")

    def outcome_for_attempt(self, attempt: int) -> Outcome:
        return self.outcomes[min(attempt, len(self.outcomes) - 1)]


DEFAULT_SCRIPT = CallScript()


@attrs.frozen
class PlannedStep:
    offset: float
    kind: StepKind


def plan_call(
    outcome: Outcome, timing: CallTiming, ringing_timeout_secs: float, *, batch: bool
) -> tuple[PlannedStep, ...]:
    """The steps of one call, with offsets from its dispatch (batch) or placement (single call).

    ``no-answer`` rings for the batch's ``telephony_call_config.ringing_timeout_secs``
    (default 60) and then fails; ``failed`` fails after ``fail_seconds``. A voicemail is an
    answered call (the documented ``call_initiation_failure`` is not sent for voicemail).
    """
    steps: list[PlannedStep] = []
    at = 0.0
    if batch:
        at += timing.initiate_seconds
    steps.append(PlannedStep(at, "initiated"))
    if outcome in ("completed", "voicemail"):
        at += timing.answer_seconds
        steps.append(PlannedStep(at, "answered"))
        at += timing.talk_seconds
        steps.append(PlannedStep(at, "ended"))
        at += timing.processing_seconds
        steps.append(PlannedStep(at, "done"))
    else:
        at += ringing_timeout_secs if outcome == "no-answer" else timing.fail_seconds
        steps.append(PlannedStep(at, "failed"))
    return tuple(steps)


def failure_reason(outcome: Outcome) -> Literal["busy", "no-answer", "unknown"]:
    """``call_initiation_failure.data.failure_reason`` for a call that never connected."""
    return "no-answer" if outcome == "no-answer" else "unknown"


def twilio_call_status(outcome: Outcome) -> str:
    """Twilio's ``CallStatus`` for the raw StatusCallback body in ``metadata.body``."""
    return "no-answer" if outcome == "no-answer" else "failed"
