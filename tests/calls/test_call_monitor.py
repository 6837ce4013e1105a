"""The batch monitor through the real app: ElevenLabs batch calls (the stand-in, its clock
moved by the test) become call events and WhatsApp follow-ups, each exactly once, racing
the post-call webhook and surviving a restart in the middle of a batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from events.batches import batch_stream, monitor_stream
from events.codec import to_new_event
from events.conversation import MessageReceived, OptedOut, phone_stream
from events.store import EventStore, RecordedEvent
from followup.call_monitor import MonitorStatus
from sandbox.elevenlabs import CallScript, ElevenLabsStandIn, Faults
from sandbox.twilio import TwilioStandIn
from tests.e2e.harness import Aftercall, of_type, running_aftercall
from web.post_call import PATH

SECRET = "wsec_test_0123456789abcdef"
POLL = "0.05"


def phones(count: int, prefix: str = "+1555200") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(count)]


def submit(el: ElevenLabsStandIn, numbers: list[str], concurrency: int | None = None) -> str:
    batch = el.submit_batch(
        {
            "call_name": "October invoices",
            "agent_id": "agent_sandbox",
            "agent_phone_number_id": "phnum_sandbox",
            "recipients": [
                {
                    "phone_number": number,
                    "conversation_initiation_client_data": {
                        "dynamic_variables": {"user_name": f"Person {number[-4:]}"}
                    },
                }
                for number in numbers
            ],
            "target_concurrency_limit": concurrency,
        }
    )
    return batch.id


@asynccontextmanager
async def monitored(
    store: EventStore,
    el: ElevenLabsStandIn,
    twilio: TwilioStandIn | None = None,
    *,
    webhooks: bool = False,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Aftercall]:
    environ = {"AFTERCALL_BATCH_POLL_SECONDS": POLL, "ELEVENLABS_WEBHOOK_SECRET": SECRET}
    async with running_aftercall(
        store, elevenlabs=el, twilio=twilio or TwilioStandIn(), env={**environ, **(env or {})}
    ) as ac:
        el.webhook_url = f"{ac.url}{PATH}" if webhooks else None
        yield ac
        el.webhook_url = None


def first_messages(record: RecordedEvent) -> bool:
    return record.type == "ReplySent" and record.data["part"] == 0


async def count_types(store: EventStore, stream: str) -> Counter[str]:
    return Counter(r.type for r in await store.read_stream(stream))


async def assert_each_followed_up_once(ac: Aftercall, numbers: list[str]) -> None:
    """One call and one first message per phone, from one read of the log."""
    found: Counter[tuple[str, str]] = Counter()
    position = 0
    while batch := await ac.store.read_all(after=position, limit=5000, category="phone"):
        found.update((r.stream, r.type) for r in batch)
        position = batch[-1].position
    for number in numbers:
        stream = f"phone-{number}"
        assert found[(stream, "CallCompleted")] == 1, number
        assert found[(stream, "ReplyRequested")] == 1, number
        assert len(ac.twilio.received(number)) == 1, number


async def test_webhook_and_monitor_racing_record_one_call_and_send_one_message(
    store: EventStore,
) -> None:
    numbers = phones(20)
    el = ElevenLabsStandIn(webhook_secret=SECRET)
    el.set_faults(Faults(duplicate_webhooks=True))
    async with monitored(store, el, webhooks=True) as ac:
        batch_id = submit(el, numbers)
        # The calls end (recipients "completed", conversations "processing") and the monitor
        # starts looking; then the analyses finish and the webhooks go out while it polls.
        await el.advance(36.5)
        await ac.wait_for(of_type("BatchSeen"))
        await el.advance(10)
        await ac.wait_for(first_messages, count=len(numbers))
        await ac.wait_for(of_type("BatchFinished"))
        await assert_each_followed_up_once(ac, numbers)
        settled = [r async for r in _records(store, batch_stream(batch_id), "RecipientSettled")]
    assert len(settled) == len(numbers)
    streams = [await ac.events(number) for number in numbers]
    # exactly one CallCompleted per phone, whoever wrote it
    assert [sum(e.type == "CallCompleted" for e in stream) for stream in streams] == [1] * 20
    calls = [next(e for e in stream if e.type == "CallCompleted") for stream in streams]
    assert {c.type for c in calls} == {"CallCompleted"}
    sources = Counter(c.data["source"] for c in calls)
    assert sum(sources.values()) == len(numbers)
    assert set(sources) <= {"webhook", "batch_monitor"}
    # Every settled recipient says whether it found the call recorded (by the webhook, or
    # by an earlier pass cut short) or recorded it itself.
    records = Counter(s.data["call_record"] for s in settled)
    assert set(records) <= {"recorded", "already_recorded"}
    assert records["recorded"] <= sources["batch_monitor"]


async def _records(store: EventStore, stream: str, type_: str) -> AsyncIterator[RecordedEvent]:
    for record in await store.read_stream(stream):
        if record.type == type_:
            yield record


async def test_voicemail_failed_and_cancelled_recipients_are_recorded_as_such(
    store: EventStore,
) -> None:
    el = ElevenLabsStandIn()
    numbers = phones(5, "+1555300")
    el.call_scripts[numbers[1]] = CallScript(outcomes=("voicemail",))
    el.call_scripts[numbers[2]] = CallScript(outcomes=("failed",))
    el.call_scripts[numbers[3]] = CallScript(outcomes=("no-answer",))
    async with monitored(store, el) as ac:
        batch_id = submit(el, numbers, concurrency=4)  # the fifth waits for a free line
        await el.advance(4)  # the failed call gives up after 3 s
        await ac.wait_for(of_type("CallFailed", numbers[2]))
        el.cancel_batch(batch_id)  # the fifth is never called
        await el.advance(120)
        [finished] = await ac.wait_for(of_type("BatchFinished"))
    assert {**finished.data, "finished_at": None} == {
        "batch_id": batch_id,
        "status": "cancelled",
        "retry_count": 0,
        "completed": 0,
        "voicemail": 0,
        "failed": 1,
        "cancelled": 4,
        "finished_at": None,
        "source": "batch_monitor",
    }
    # Cancelling ended the calls still in progress; only the failed one had ended before.
    assert [r.type for r in await ac.events(numbers[2])] == ["CallFailed"]
    for number in numbers:
        assert ac.twilio.received(number) == []


async def test_completed_voicemail_and_failed_calls_of_a_batch(store: EventStore) -> None:
    el = ElevenLabsStandIn()
    numbers = phones(4, "+1555310")
    el.call_scripts[numbers[1]] = CallScript(outcomes=("voicemail",))
    el.call_scripts[numbers[2]] = CallScript(outcomes=("failed",))
    el.call_scripts[numbers[3]] = CallScript(outcomes=("no-answer",))
    async with monitored(store, el) as ac:
        batch_id = submit(el, numbers)
        await el.advance(120)
        [finished] = await ac.wait_for(of_type("BatchFinished"))
        await ac.wait_for(first_messages)
        reasons = {}
        for number in numbers[1:]:
            [failed] = await ac.events(number)
            assert failed.type == "CallFailed"
            assert failed.data["batch_id"] == batch_id
            reasons[number] = failed.data["reason"]
    assert reasons == {numbers[1]: "voicemail", numbers[2]: "failed", numbers[3]: "failed"}
    assert (finished.data["completed"], finished.data["voicemail"], finished.data["failed"]) == (
        1,
        1,
        2,
    )
    assert len(ac.twilio.received(numbers[0])) == 1
    for number in numbers[1:]:
        assert ac.twilio.received(number) == []


async def test_a_restart_in_the_middle_of_a_batch_neither_repeats_nor_misses(
    store: EventStore,
) -> None:
    numbers = phones(12, "+1555400")
    el = ElevenLabsStandIn()
    twilio = TwilioStandIn()
    async with monitored(store, el, twilio) as ac:
        batch_id = submit(el, numbers, concurrency=4)
        await el.advance(42)  # the first four calls end and are analysed
        await ac.wait_for(of_type("RecipientSettled"), count=4)
        await ac.wait_for(first_messages, count=4)
    stream = batch_stream(batch_id)
    before = await count_types(store, stream)
    assert before["RecipientSettled"] == 4
    # While aftercall is down, the rest of the batch is called and finishes.
    await el.advance(200)
    assert el.batches[batch_id].status == "completed"
    duplicates_before = store.statistics().duplicates
    async with monitored(store, el, twilio) as ac:
        await ac.wait_for(of_type("BatchFinished"))
        await ac.wait_for(first_messages, count=len(numbers))
        await assert_each_followed_up_once(ac, numbers)
        assert ac.system.call_monitor is not None
        status: MonitorStatus = ac.system.call_monitor.status
        assert status.calls_recorded == len(numbers) - 4
    after = await count_types(store, stream)
    assert after == Counter({"BatchSeen": 1, "RecipientSettled": len(numbers), "BatchFinished": 1})
    # Nothing was even tried twice: no append of the second run was a duplicate.
    assert store.statistics().duplicates == duplicates_before
    assert len(await store.read_stream(monitor_stream("agent_sandbox"))) == 1


async def test_two_hundred_recipients_completing_over_time_get_one_follow_up_each(
    store: EventStore,
) -> None:
    numbers = phones(200, "+1555500")
    el = ElevenLabsStandIn()
    # Delivery statuses are not what this is about; without them the log holds half as much.
    twilio = TwilioStandIn(status_callbacks=False, read_receipts=False)
    async with monitored(store, el, twilio) as ac:
        batch_id = submit(el, numbers, concurrency=50)
        for _ in range(20):  # 200 s of calling, 50 lines at a time, ten seconds per step
            await el.advance(10)
        await ac.wait_for(first_messages, count=len(numbers), within=60)
        await ac.wait_for(of_type("BatchFinished"))
        await assert_each_followed_up_once(ac, numbers)
    counts = await count_types(store, batch_stream(batch_id))
    assert counts["RecipientSettled"] == len(numbers)
    sent: Counter[Any] = Counter(
        message.to for number in numbers for message in ac.twilio.received(number)
    )
    assert len(sent) == len(numbers)
    assert set(sent.values()) == {1}


async def test_a_batch_call_to_someone_who_opted_out_sends_nothing(store: EventStore) -> None:
    """The batch monitor records the call, says "skipped: opted out" in the batch's record,
    and the phone actor records the skip instead of a first message."""
    el = ElevenLabsStandIn()
    [number, other] = phones(2, "+1555320")
    opted_out = [
        MessageReceived("SMstop", number, "Stop", datetime.now(UTC)),
        OptedOut("SMstop", "stop", datetime.now(UTC)),
    ]
    await store.append(phone_stream(number), [to_new_event(e) for e in opted_out])
    async with monitored(store, el) as ac:
        batch_id = submit(el, [number, other])
        await el.advance(120)
        await ac.wait_for(of_type("BatchFinished"))
        [skipped] = await ac.wait_for(of_type("FirstMessageSkipped", number))
        await ac.wait_for(first_messages)
        settled = {
            r.data["phone"]: r.data["detail"]
            async for r in _records(store, batch_stream(batch_id), "RecipientSettled")
        }
    assert skipped.data["reason"] == "skipped: opted out"
    assert settled == {number: "skipped: opted out", other: None}
    assert ac.twilio.received(number) == []
    assert len(ac.twilio.received(other)) == 1
