"""The console's projection and queries, on both stores: what each page reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aftercall.storage import open_read_models
from events.batches import BatchFinished, BatchSeen, RecipientSettled, batch_stream
from events.calls import CallCompleted, CallFailed, TranscriptLine
from events.codec import to_new_event
from events.conversation import (
    AgentAnswered,
    AgentAsked,
    AgentSessionOpened,
    AgentTurnFailed,
    DeliveryStatusChanged,
    MessageReceived,
    ReplyFailed,
    ReplyRequested,
    ReplySent,
    delivery_stream,
    phone_stream,
)
from events.store import EventStore
from projections import console_queries, queries
from projections.console import CONSOLE_PROJECTION
from projections.readmodels import ReadModels
from projections.runner import ProjectionRunner, rebuild
from tests.projections.conftest import snapshot
from tests.projections.workload import append_all, interleaved
from web.console import render

NOW = datetime.now(UTC).replace(microsecond=0)
# Not +1555...: the workload's phones are +1555 and seven digits.
ANA = "+447700900101"
BOB = "+447700900102"
CLO = "+447700900103"


@pytest.fixture
async def models(store: EventStore) -> AsyncIterator[ReadModels]:
    async with open_read_models(store) as read_models:
        yield read_models


async def _append(store: EventStore, stream: str, *events: Any) -> None:
    await store.append(stream, [to_new_event(e) for e in events])


async def _project(store: EventStore, models: ReadModels) -> None:
    await ProjectionRunner(store, models).catch_up()


def _ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


async def _ana_and_friends(store: EventStore) -> None:
    """Ana: a call, a first message read, a question, a reopened session, an answer, a
    fallback, a reply Twilio refused. Bob wrote without a call. Clo's call failed."""
    await _append(
        store,
        phone_stream(ANA),
        CallCompleted(
            "conv_ana",
            "agent_1",
            ANA,
            "Refund of 20 euros by Friday.",
            transcript=tuple(TranscriptLine("user", f"line {i}") for i in range(9)),
            dynamic_variables={"user_name": "Ana"},
            batch_id="btcal_1",
            ended_at=_ago(3600),
        ),
        ReplyRequested(
            "r1", "first_message", ("Hi Ana",), _ago(3590), call_conversation_id="conv_ana"
        ),
        ReplySent("r1", 0, "SMfirst", "queued", _ago(3589), send_started_at=_ago(3589.5)),
    )
    await _append(store, delivery_stream(ANA), DeliveryStatusChanged("SMfirst", "read", _ago(3500)))
    await _append(
        store,
        phone_stream(ANA),
        MessageReceived("SMq1", ANA, "<script>alert(1)</script>", _ago(600), profile_name="A."),
        AgentSessionOpened("agconv_2", "agent_1", True, 3, _ago(599)),
        AgentAsked("t1", ("SMq1",), "question", _ago(598)),
        AgentAnswered("t1", "Friday.", 1.25, _ago(597)),
        ReplyRequested(
            "r2", "agent", ("Friday.",), _ago(596.9), in_reply_to=("SMq1",), turn_id="t1"
        ),
        ReplySent("r2", 0, "SManswer", "queued", _ago(596), send_started_at=_ago(596.5)),
        MessageReceived("SMq2", ANA, "and?", _ago(300)),
        AgentAsked("t2", ("SMq2",), "and?", _ago(299)),
        AgentTurnFailed("t2", "timeout", "no answer in 30 s", _ago(269)),
        ReplyRequested(
            "r3", "fallback", ("Sorry",), _ago(268), in_reply_to=("SMq2",), turn_id="t2"
        ),
        ReplyFailed("r3", 0, 63016, 400, "outside the window", _ago(267)),
    )
    await _append(
        store,
        phone_stream(BOB),
        MessageReceived("SMbob", BOB, "hello?", _ago(100), profile_name="Bob"),
    )
    await _append(
        store,
        phone_stream(CLO),
        CallFailed("conv_clo", "agent_1", CLO, "no-answer", batch_id="btcal_1"),
    )
    await _append(
        store,
        batch_stream("btcal_1"),
        BatchSeen("btcal_1", "agent_1", "March", 3, "in_progress", _ago(7200), _ago(7100)),
        RecipientSettled("btcal_1", "rcp_a", "conv_ana", ANA, "completed", "recorded", _ago(3599)),
        RecipientSettled("btcal_1", "rcp_c", "conv_clo", CLO, "failed", "recorded", _ago(3598)),
        RecipientSettled(
            "btcal_1",
            "rcp_x",
            None,
            None,
            "voicemail",
            "none",
            _ago(3597),
            detail="no phone number",
        ),
        BatchFinished("btcal_1", "completed", 0, 1, 1, 1, 0, _ago(3500)),
    )


async def test_each_page_reads_what_happened(store: EventStore, models: ReadModels) -> None:
    await _ana_and_friends(store)
    await _project(store, models)

    page = await console_queries.conversation_list(models, now=NOW)
    # Newest activity first: Clo's failed call was recorded last, then Bob wrote.
    assert [(r["phone"], r["name"]) for r in page.rows] == [(CLO, None), (BOB, "Bob"), (ANA, "Ana")]
    ana = page.rows[2]
    assert (ana["last_text"], ana["last_direction"], ana["state"]) == ("and?", "inbound", "failed")
    assert page.next is None

    detail = await console_queries.conversation_detail(models, ANA, now=NOW)
    assert detail.conversation["name"] == "Ana"  # the call's name, not the profile's
    call = detail.calls[0]
    assert (call["summary"], call["batch_id"], call["transcript_lines"]) == (
        "Refund of 20 euros by Friday.",
        "btcal_1",
        9,
    )
    assert [line["message"] for line in render.transcript(call["transcript_tail"])] == [
        f"line {i}" for i in range(3, 9)
    ]
    shown = [
        (kind, row.get("message_id") or row["kind"], row.get("status"))
        for kind, row in detail.items
    ]
    assert shown == [
        ("message", "SMfirst", "read"),
        ("message", "SMq1", "received"),
        ("note", "session_reopened", None),
        ("note", "agent_answered", None),
        ("message", "SManswer", "queued"),
        ("message", "SMq2", "received"),
        ("note", "fallback", None),
        ("message", "r3/0", "failed"),
        ("note", "reply_failed", None),
    ]
    answered = detail.items[3][1]
    assert answered["seconds"] == 1.25
    answer = detail.items[4][1]
    assert answer["agent_seconds"] == 1.25
    # From the question (600 s ago) to the send's start (596.5 s ago), less the agent's time.
    assert answer["added_seconds"] == pytest.approx(3.5 - 1.25)
    assert detail.items[1][1]["body"] == "<script>alert(1)</script>"
    assert detail.position == (await store.read_stream(phone_stream(ANA)))[-1].position

    calls = await console_queries.calls_page(models)
    by_id = {c["conversation_id"]: c for c in calls.calls}
    assert render.followup(by_id["conv_ana"])[0] == "yes"
    assert "read" in render.followup(by_id["conv_ana"])[1]
    assert render.followup(by_id["conv_clo"])[0] == "no"
    batch = await console_queries.calls_page(models, batch_id="btcal_1")
    assert [(b["name"], b["settled"], b["completed"], b["voicemail"]) for b in batch.batches] == [
        ("March", 3, 1, 1)
    ]
    assert [(p["recipient_id"], p["detail"]) for p in batch.recipients][-1] == (
        "rcp_x",
        "no phone number",
    )
    with pytest.raises(queries.NotFound):
        await console_queries.calls_page(models, batch_id="btcal_nope")

    overview = await console_queries.overview(models, now=NOW)
    assert overview["by_state"]["failed"] == 2
    assert overview["by_state"]["active"] == 1
    assert overview["failures_today"] == (1 if _ago(267).date() == NOW.date() else 0)
    assert [e["code"] for e in overview["errors"]] == [63016]
    assert overview["funnel"] == {"calls": 1, "first_message": 1, "replied": 1, "continued": 1}
    assert overview["fallbacks"] == {"timeout": 1}
    assert [(h.count, h.p50) for h in overview["agent_latency"]] == [(1, 1.25)]


async def test_the_list_pages_by_keyset_filters_and_searches(
    store: EventStore, models: ReadModels
) -> None:
    await append_all(store, list(interleaved(5, 60)))
    await _ana_and_friends(store)
    await _project(store, models)
    everyone = await models.query("SELECT count(*) AS n FROM conversations")
    joined = await models.query(
        "SELECT count(*) AS n FROM conversations c JOIN console_people p ON p.phone = c.phone"
    )
    assert everyone == joined  # every conversation is in the list

    seen: list[str] = []
    cursor = None
    activity: list[datetime] = []
    while True:
        page = await console_queries.conversation_list(models, after=cursor, limit=7, now=NOW)
        seen += [r["phone"] for r in page.rows]
        activity += [r["activity_at"] for r in page.rows]
        if page.next is None:
            break
        cursor = console_queries.Cursor.decode(page.next.encode())
    assert len(seen) == len(set(seen)) == everyone[0]["n"]
    assert activity == sorted(activity, reverse=True)

    api = await queries.conversations(models, limit=1000, now=NOW)
    for state in console_queries.states():
        filtered = await console_queries.conversation_list(
            models, wanted_states=[state], limit=200, now=NOW
        )
        assert {r["phone"] for r in filtered.rows} == {
            r["phone"] for r in api if r["state"] == state
        }, state
    assert [
        r["phone"] for r in (await console_queries.conversation_list(models, search="ANA")).rows
    ] == [ANA]
    assert [
        r["phone"] for r in (await console_queries.conversation_list(models, search="900102")).rows
    ] == [BOB]
    assert (await console_queries.conversation_list(models, search="100%_")).rows == []
    with pytest.raises(ValueError, match="unknown state"):
        await console_queries.conversation_list(models, wanted_states=["nope"])
    with pytest.raises(ValueError, match="cursor"):
        console_queries.Cursor.decode("2026-01-01T00:00:00~not a phone")


async def test_a_rebuild_makes_the_same_console_tables(
    store: EventStore, models: ReadModels
) -> None:
    await append_all(store, list(interleaved(9, 40)))
    await _ana_and_friends(store)
    await _project(store, models)
    live = await snapshot(models, (CONSOLE_PROJECTION,))
    await rebuild(store, models, (CONSOLE_PROJECTION,))
    assert await snapshot(models, (CONSOLE_PROJECTION,)) == live
    assert len(live["console_timeline"]) > 40


def _hours(rows: Sequence[console_queries.LatencyHour]) -> list[datetime]:
    return [row.hour for row in rows]


async def test_the_overview_charts_the_last_day_only(store: EventStore, models: ReadModels) -> None:
    for hours_ago, seconds in ((30, 9.0), (5, 1.0), (5, 3.0), (1, 2.0)):
        turn = f"t{hours_ago}{seconds}"
        await _append(
            store, phone_stream(ANA), AgentAnswered(turn, "x", seconds, _ago(hours_ago * 3600))
        )
    await _project(store, models)
    found = await console_queries.overview(models, now=NOW)
    latency = found["agent_latency"]
    assert [row.count for row in latency] == [2, 1]
    assert latency[0].p50 == 2.0
    assert latency[0].p99 == pytest.approx(2.98)
    assert all(hour >= NOW - timedelta(hours=25) for hour in _hours(latency))
