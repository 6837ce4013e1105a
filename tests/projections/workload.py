"""Realistic follow-up conversations as event logs, for projection tests and the benchmark.

Each phone gets what the phone actor and the webhooks really record, in their order: a
call (sometimes a failed one), the first message with its statuses, inbound messages,
agent turns (answers, fallbacks for each reason, reopened sessions), multi-part replies,
Twilio refusals and failed deliveries with error codes, status callbacks that beat
``ReplySent`` to the log, an actor stopped by its supervisor, and events of a category the
projections do not know (``batch-...``), which they must ignore.

Everything is derived from a seed, so a test that fails shows the same log again.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import trio

from events.calls import CallCompleted, CallFailed
from events.conversation import (
    AgentAnswered,
    AgentAsked,
    AgentSessionClosed,
    AgentSessionOpened,
    AgentTurnFailed,
    DeliveryStatusChanged,
    FallbackReason,
    MediaItem,
    MessageReceived,
    ReplyDelayed,
    ReplyFailed,
    ReplyRequested,
    ReplySent,
    Template,
    delivery_stream,
    phone_stream,
)
from events.store import EventStore, NewEvent
from events.supervision import ActorStopped, supervision_stream

START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
FALLBACK_REASONS: tuple[FallbackReason, ...] = (
    "timeout",
    "empty",
    "session_closed",
    "unavailable",
    "protocol",
)


@attrs.frozen
class Append:
    """One append: events for one stream, as one writer records them together."""

    stream: str
    events: tuple[NewEvent, ...]


def _plain(_instance: Any, _field: Any, value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def encode(event: Any) -> NewEvent:
    """What ``events.codec.to_new_event`` makes, ten times faster (a million events add up);
    a test holds the two equal."""
    data = attrs.asdict(event, value_serializer=_plain)
    return NewEvent(type(event).__name__, data)


def phone_number(index: int) -> str:
    return f"+1555{index:07d}"


class _Conversation:
    """Builds one phone's log, append by append, with a clock that moves forward."""

    def __init__(self, rng: random.Random, index: int) -> None:
        self.rng = rng
        self.index = index
        self.phone = phone_number(index)
        self.stream = phone_stream(self.phone)
        # Delivery statuses have their own stream; a log written before they moved out
        # holds them in the conversation's, and the read models must take both.
        self.status_stream = self.stream if rng.random() < 0.1 else delivery_stream(self.phone)
        self.now = START + timedelta(seconds=rng.uniform(0, 7 * 24 * 3600))
        self.appends: list[Append] = []
        self.sids = 0
        self.replies = 0
        self.sessions = 0

    def tick(self, low: float = 0.05, high: float = 3.0) -> datetime:
        self.now += timedelta(seconds=self.rng.uniform(low, high))
        return self.now

    def record(self, *events: Any, stream: str | None = None) -> None:
        self.appends.append(Append(stream or self.stream, tuple(encode(e) for e in events)))

    def sid(self) -> str:
        self.sids += 1
        return f"SM{self.index:010d}{self.sids:06d}{'0' * 16}"

    def reply(
        self,
        kind: Any,
        parts: tuple[str, ...],
        *,
        in_reply_to: tuple[str, ...] = (),
        turn_id: str | None = None,
        call_id: str | None = None,
        template: Template | None = None,
        before: Sequence[Any] = (),
    ) -> None:
        self.replies += 1
        reply_id = f"r{self.index}x{self.replies}"
        request = ReplyRequested(
            reply_id=reply_id,
            kind=kind,
            parts=parts,
            requested_at=self.tick(),
            in_reply_to=in_reply_to,
            turn_id=turn_id,
            template=template,
            call_conversation_id=call_id,
        )
        self.record(*before, request)
        for part in range(1 if template is not None else len(parts)):
            self.deliver(reply_id, part)

    def deliver(self, reply_id: str, part: int) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.03:
            self.record(
                ReplyFailed(
                    reply_id, part, 63007, 400, "Twilio could not find a Channel", self.tick()
                )
            )
            return
        if roll < 0.05:
            self.record(ReplyDelayed(reply_id, part, "503 from Twilio", 5.0, self.tick()))
        started = self.tick()
        sid = self.sid()
        sent = ReplySent(
            reply_id, part, sid, "queued", self.tick(0.01, 0.3), send_started_at=started
        )
        statuses: list[Any] = []
        if rng.random() < 0.04:
            statuses = [
                DeliveryStatusChanged(sid, "sent", self.tick()),
                DeliveryStatusChanged(sid, "failed", self.tick(), 63016, "outside window"),
            ]
        else:
            for status in ("sent", "delivered", "read")[: rng.randint(1, 3)]:
                statuses.append(DeliveryStatusChanged(sid, status, self.tick()))
            if rng.random() < 0.2:
                rng.shuffle(statuses)  # Twilio does not promise order
        if rng.random() < 0.1:
            # a callback beats our own ReplySent to the log
            self.record(statuses[0], stream=self.status_stream)
            self.record(sent)
            statuses = statuses[1:]
        else:
            self.record(sent)
        for status in statuses:
            self.record(status, stream=self.status_stream)

    def session(self) -> str:
        self.sessions += 1
        session_id = f"conv_agent_{self.index}_{self.sessions}"
        self.record(AgentSessionOpened(session_id, "agent_1", self.sessions > 1, 0, self.tick()))
        return session_id

    def build(self) -> list[Append]:
        rng = self.rng
        call_id = f"conv_{self.index}"
        if rng.random() < 0.05:
            self.record(CallFailed(call_id, "agent_1", self.phone, "no-answer"))
            return self.appends
        self.record(
            CallCompleted(
                call_id, "agent_1", self.phone, f"summary {self.index}", ended_at=self.tick()
            )
        )
        template = Template("HX" + "0" * 32, {"1": "Ana"}) if rng.random() < 0.3 else None
        self.reply(
            "first_message",
            () if template else ("Hi, thanks for the call",),
            call_id=call_id,
            template=template,
        )
        session: str | None = None
        for _turn in range(rng.choice((0, 1, 1, 2, 3, 5))):
            self.tick(30, 600)
            burst = tuple(self.sid() for _ in range(rng.choice((1, 1, 1, 2))))
            for sid in burst:
                media = (
                    (MediaItem("image/jpeg", "https://example.test/m.jpg"),)
                    if rng.random() < 0.05
                    else ()
                )
                self.record(
                    MessageReceived(
                        sid, self.phone, f"question {sid[-4:]}", self.tick(), media=media
                    )
                )
            if rng.random() < 0.05:
                self.reply("media_notice", ("Text only please",), in_reply_to=burst)
                continue
            if session is None or rng.random() < 0.15:
                if session is not None:
                    self.record(AgentSessionClosed(session, 1002, "idle", None, self.tick()))
                session = self.session()
            turn_id = f"t{self.index}x{self.replies}"
            self.record(AgentAsked(turn_id, burst, "question", self.tick(), session))
            if rng.random() < 0.1:
                reason = rng.choice(FALLBACK_REASONS)
                self.reply(
                    "fallback",
                    ("Sorry, try again",),
                    in_reply_to=burst,
                    turn_id=turn_id,
                    before=[AgentTurnFailed(turn_id, reason, "detail", self.tick())],
                )
                continue
            parts = tuple(f"answer part {i}" for i in range(rng.choice((1, 1, 1, 2))))
            agent_seconds = round(rng.uniform(0.3, 4.0), 3)
            self.reply(
                "agent",
                parts,
                in_reply_to=burst,
                turn_id=turn_id,
                before=[
                    AgentAnswered(
                        turn_id,
                        " ".join(parts),
                        agent_seconds,
                        self.tick(agent_seconds, agent_seconds + 0.01),
                    )
                ],
            )
        if rng.random() < 0.02:
            self.record(
                ActorStopped(self.phone, "RuntimeError", "boom", 5, 60.0, self.tick()),
                stream=supervision_stream(self.phone),
            )
        if rng.random() < 0.05:
            # another concern's category (batch monitor): unknown to the projections
            self.appends.append(
                Append(
                    f"batch-btcal_{self.index}",
                    (NewEvent("BatchPolled", {"batch_id": f"btcal_{self.index}"}),),
                )
            )
        return self.appends


def conversation(seed: int, index: int) -> list[Append]:
    return _Conversation(random.Random(f"{seed}/{index}"), index).build()


def interleaved(seed: int, phones: int, first: int = 0) -> Iterator[Append]:
    """Every phone's appends, in order per stream, interleaved across phones."""
    rng = random.Random(seed)
    queues = [conversation(seed, index) for index in range(first, first + phones)]
    cursors = [0] * len(queues)
    live = [i for i, q in enumerate(queues) if q]
    while live:
        slot = rng.randrange(len(live))
        which = live[slot]
        yield queues[which][cursors[which]]
        cursors[which] += 1
        if cursors[which] == len(queues[which]):
            live[slot] = live[-1]
            live.pop()


async def append_all(store: EventStore, appends: Sequence[Append], *, writers: int = 16) -> int:
    """Append concurrently, one writer per stream at a time (its order kept); returns events."""
    by_stream: dict[str, list[Append]] = {}
    for append in appends:
        by_stream.setdefault(append.stream, []).append(append)
    streams = list(by_stream.values())

    async def writer(mine: list[list[Append]]) -> None:
        for stream in mine:
            for append in stream:
                await store.append(append.stream, list(append.events))

    async with trio.open_nursery() as nursery:
        for w in range(writers):
            nursery.start_soon(writer, streams[w::writers])
    return sum(len(a.events) for a in appends)


async def batches(appends: Sequence[Append], size: int) -> AsyncIterator[Sequence[Append]]:
    for start in range(0, len(appends), size):
        yield appends[start : start + size]
