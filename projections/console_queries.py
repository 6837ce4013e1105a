"""The operator console's questions, answered from the read models with a few index reads.

Every page here is bounded by an index, not by the size of the log: the conversation list
pages by keyset over ``console_people (activity_at, phone)``, a conversation reads its own
rows by ``phone``, the overview counts with indexed ranges (today's failures, the last
day's latency hours) and small tables. ``benchmarks/console.py`` measures them with
100,000 conversations.

Percentiles of the overview are computed by PostgreSQL (``percentile_cont``) next to the
samples; on SQLite, whose embedded log is small, the samples of the last day are read and
computed here the same way (``projections.queries.percentile``, which interpolates as
``percentile_cont`` does).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

import attrs
import trio

from events.phones import InvalidPhone, identity_phone
from projections.console import BATCHES, CALLS, FAILURES, FOLLOWUPS, PEOPLE, RECIPIENTS, TIMELINE
from projections.conversations import CONVERSATIONS, IDLE_AFTER, STATES, effective_state
from projections.history import MESSAGES
from projections.metrics import REPLIES
from projections.model import ColumnType, Row, Table
from projections.queries import PERCENTILES, NotFound, percentile
from projections.readmodels import ReadModels

PAGE_SIZE: Final = 50
MAX_PAGE: Final = 200
#: The most messages one conversation page shows (the newest); older ones are in the
#: events page, stream by stream.
MAX_MESSAGES: Final = 300
#: A search is a phone number or a part of a name; longer is not a search.
MAX_SEARCH: Final = 80
#: Hours the overview's latency chart covers.
CHART_HOURS: Final = 24


def _types(*tables: Table) -> dict[str, ColumnType]:
    found: dict[str, ColumnType] = {}
    for table in tables:
        found.update({c.name: c.type for c in table.columns})
    return found


def states() -> tuple[str, ...]:
    """The states a conversation can be in, as the conversations projection has them."""
    return tuple(STATES)


# -- the conversation list ----------------------------------------------------------------
@attrs.frozen
class Cursor:
    """Where a page of the conversation list ends: the last row's activity and phone."""

    activity_at: datetime
    phone: str

    def encode(self) -> str:
        return f"{self.activity_at.astimezone(UTC).isoformat(timespec='microseconds')}~{self.phone}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        at, sep, phone = text.partition("~")
        try:
            if not sep or len(text) > 100:
                raise ValueError
            moment = datetime.fromisoformat(at)
            if moment.tzinfo is None:
                raise ValueError
            return cls(moment.astimezone(UTC), identity_phone(phone))
        except (ValueError, OverflowError, InvalidPhone):
            raise ValueError(
                f"the page cursor {text[:60]!r} is not one this console made"
            ) from None


@attrs.frozen
class ConversationPage:
    rows: list[Row]
    next: Cursor | None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _state_filter(wanted: Sequence[str], now: datetime) -> tuple[str, list[Any]]:
    """SQL for "effective state is one of ``wanted``" (``idle`` is ``waiting`` gone quiet)."""
    known = states()
    unknown = sorted(set(wanted).difference(known))
    if unknown:
        raise ValueError(f"unknown state {', '.join(unknown)}; states are {', '.join(known)}")
    quiet = now - IDLE_AFTER
    clauses: list[str] = []
    params: list[Any] = []
    for state in dict.fromkeys(wanted):
        if state == "idle":
            clauses.append(
                "(c.state = 'waiting' AND (c.last_activity_at IS NULL OR c.last_activity_at <= ?))"
            )
            params.append(quiet)
        elif state == "waiting":
            clauses.append("(c.state = 'waiting' AND c.last_activity_at > ?)")
            params.append(quiet)
        else:
            clauses.append("c.state = ?")
            params.append(state)
    return "(" + " OR ".join(clauses) + ")", params


def search_text(raw: str) -> str:
    """What a search box's text matches against (``console_people.search``)."""
    text = " ".join(raw.split()).lower()
    if len(text) > MAX_SEARCH:
        raise ValueError(f"a search has at most {MAX_SEARCH} characters")
    if "\x00" in text:
        raise ValueError("a search cannot contain a NUL character")
    return text


async def conversation_list(
    models: ReadModels,
    *,
    wanted_states: Sequence[str] = (),
    search: str = "",
    after: Cursor | None = None,
    limit: int = PAGE_SIZE,
    now: datetime | None = None,
) -> ConversationPage:
    """Conversations, the most recently active first, one page after ``after``."""
    now = now or datetime.now(UTC)
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"a page has 1 to {MAX_PAGE} conversations, not {limit}")
    where: list[str] = []
    params: list[Any] = []
    if wanted_states:
        clause, values = _state_filter(wanted_states, now)
        where.append(clause)
        params += values
    text = search_text(search)
    if text:
        where.append("p.search LIKE ? ESCAPE '\\'")
        params.append(f"%{_escape_like(text)}%")
    if after is not None:
        where.append("(p.activity_at, p.phone) < (?, ?)")
        params += [after.activity_at, after.phone]
    rows = await models.query(
        "SELECT p.phone, p.name, p.activity_at, c.state, c.last_inbound_at,"
        " c.last_inbound_text, c.last_outbound_at, c.last_outbound_text, c.last_activity_at,"
        " c.last_error, c.messages_in, c.messages_out, c.unanswered"
        " FROM console_people p JOIN conversations c ON c.phone = p.phone"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY p.activity_at DESC, p.phone DESC LIMIT ?",
        *params,
        limit + 1,
        types=_types(PEOPLE, CONVERSATIONS),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    for row in rows:
        row["state"] = effective_state(row["state"], row["last_activity_at"], now)
        row.update(_last_message(row))
    last = rows[-1] if rows and more else None
    return ConversationPage(
        rows, None if last is None else Cursor(last["activity_at"], last["phone"])
    )


def _last_message(row: Row) -> dict[str, Any]:
    inbound, outbound = row["last_inbound_at"], row["last_outbound_at"]
    if inbound is not None and (outbound is None or inbound >= outbound):
        return {"last_text": row["last_inbound_text"], "last_direction": "inbound"}
    if outbound is not None:
        return {"last_text": row["last_outbound_text"], "last_direction": "outbound"}
    return {"last_text": None, "last_direction": None}


# -- one conversation ---------------------------------------------------------------------
_CONVERSATION_COLUMNS: Final = (
    "c.phone, c.state, c.call_conversation_id, c.calls_completed, c.calls_failed,"
    " c.messages_in, c.messages_out, c.replies_failed, c.fallbacks, c.unanswered,"
    " c.pending_parts, c.last_inbound_at, c.last_outbound_at, c.window_ends_at,"
    " c.last_activity_at, c.last_error, c.last_error_at, c.started_at, c.position,"
    " c.control, c.control_by, c.control_reason, c.control_since, c.opted_out,"
    " c.unreachable_code, p.name, p.name_from, p.activity_at"
)
_MESSAGE_COLUMNS: Final = (
    "m.message_id, m.direction, m.message_sid, m.reply_id, m.part, m.kind, m.body,"
    " m.media_count, m.status, m.error_code, m.error_message, m.call_conversation_id,"
    " m.created_at, m.sent_at, m.delivered_at, m.read_at, m.failed_at, m.position,"
    " r.agent_seconds, r.added_seconds, r.total_seconds"
)


@attrs.frozen
class ConversationDetail:
    conversation: Row
    calls: list[Row]
    #: Messages and what happened between them, in the order of the log: ("message", row)
    #: or ("note", row).
    items: list[tuple[str, Row]]
    #: How far into the log the read models had got for this phone (its last row's
    #: position): live updates start after it.
    position: int
    #: The oldest messages were left out (more than `MAX_MESSAGES`).
    truncated: bool


async def conversation_detail(
    models: ReadModels, phone: str, *, messages: int = MAX_MESSAGES, now: datetime | None = None
) -> ConversationDetail:
    """The call(s), then every message with its status and timing, and the notes between
    them; `NotFound` when the phone has no conversation."""
    now = now or datetime.now(UTC)
    found = await models.query(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations c"
        " LEFT JOIN console_people p ON p.phone = c.phone WHERE c.phone = ?",
        phone,
        types=_types(CONVERSATIONS, PEOPLE),
    )
    if not found:
        raise NotFound(f"no conversation with {phone}")
    conversation = found[0]
    conversation["state"] = effective_state(
        conversation["state"], conversation["last_activity_at"], now
    )
    window = conversation["window_ends_at"]
    conversation["window_open"] = window is not None and window > now
    calls = await models.query(
        "SELECT conversation_id, outcome, agent_id, customer_name, summary, transcript_tail,"
        " transcript_lines, reason, batch_id, recipient_id, ended_at, source, follow_up,"
        " recorded_at, position FROM console_calls WHERE phone = ?"
        " ORDER BY position DESC LIMIT 10",
        phone,
        types=_types(CALLS),
    )
    history = await models.query(
        f"SELECT {_MESSAGE_COLUMNS} FROM message_history m"
        " LEFT JOIN metric_replies r ON r.reply_id = m.reply_id AND m.part = 0"
        " WHERE m.phone = ? ORDER BY m.position DESC, m.message_id DESC LIMIT ?",
        phone,
        messages + 1,
        types=_types(MESSAGES, REPLIES),
    )
    truncated = len(history) > messages
    history = history[:messages]
    history.reverse()
    since = history[0]["position"] if truncated and history else 0
    notes = await models.query(
        "SELECT position, kind, at, seconds, code, detail FROM console_timeline"
        " WHERE phone = ? AND position >= ? ORDER BY position LIMIT ?",
        phone,
        since,
        messages * 4,
        types=_types(TIMELINE),
    )
    items: list[tuple[int, int, str, Row]] = [(m["position"], 1, "message", m) for m in history]
    items += [(n["position"], 0, "note", n) for n in notes]
    # A note (the agent's time for a turn) sorts before a message written by the same
    # event; positions order everything else.
    items.sort(key=lambda item: (item[0], item[1]))
    positions = [conversation["position"] or 0] + [i[0] for i in items]
    return ConversationDetail(
        conversation=conversation,
        calls=calls,
        items=[(kind, row) for _, _, kind, row in items],
        position=max(positions),
        truncated=truncated,
    )


# -- the overview -------------------------------------------------------------------------
@attrs.frozen
class LatencyHour:
    hour: datetime
    count: int
    p50: float
    p95: float
    p99: float


def start_of_day(now: datetime) -> datetime:
    moment = now.astimezone(UTC)
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


async def overview(models: ReadModels, *, now: datetime | None = None) -> dict[str, Any]:
    """Counts by state, today's delivery failures, the funnel, latency by hour over the
    last day, fallbacks by reason and Twilio errors by code.

    The questions are independent, so they are asked at once, each on a connection of the
    pool (PostgreSQL): the page waits for the slowest (counting 100,000 conversations by
    state), not for the sum. SQLite takes them one after the other, as it reads.
    """
    now = now or datetime.now(UTC)
    today = start_of_day(now)
    since = now - timedelta(hours=CHART_HOURS)
    asked: dict[str, Any] = {}

    async def ask(name: str, question: Callable[[], Awaitable[Any]]) -> None:
        asked[name] = await question()

    async with trio.open_nursery() as nursery:
        for name, question in (
            # By state through the (state, last_activity_at) index; idle ones apart.
            (
                "states",
                partial(
                    models.query, "SELECT state, count(*) AS n FROM conversations GROUP BY state"
                ),
            ),
            (
                "quiet",
                partial(
                    models.query,
                    "SELECT count(*) AS n FROM conversations WHERE state = 'waiting' AND"
                    " (last_activity_at IS NULL OR last_activity_at <= ?)",
                    now - IDLE_AFTER,
                ),
            ),
            (
                "failures_today",
                partial(
                    models.query, "SELECT count(*) AS n FROM console_failures WHERE at >= ?", today
                ),
            ),
            (
                "errors",
                partial(
                    models.query,
                    "SELECT error_code, count(*) AS messages,"
                    " sum(CASE WHEN at >= ? THEN 1 ELSE 0 END) AS today, max(at) AS last_at"
                    " FROM console_failures GROUP BY error_code"
                    " ORDER BY count(*) DESC, error_code LIMIT 30",
                    today,
                    types={"last_at": "time"},
                ),
            ),
            (
                "funnel",
                partial(
                    models.query,
                    "SELECT count(*) AS calls, count(first_message_at) AS first_message,"
                    " count(replied_at) AS replied, count(continued_at) AS continued"
                    " FROM metric_funnel",
                ),
            ),
            (
                "fallbacks",
                partial(
                    models.query,
                    "SELECT label, count FROM metric_counters WHERE metric = 'fallbacks'"
                    " ORDER BY count DESC, label",
                ),
            ),
            ("agent", partial(_latency_by_hour, models, "metric_turns", "agent_seconds", since)),
            ("added", partial(_latency_by_hour, models, "metric_replies", "added_seconds", since)),
        ):
            nursery.start_soon(ask, name, question)
    by_state: dict[str, int] = dict.fromkeys(states(), 0)
    for row in asked["states"]:
        by_state[row["state"]] = by_state.get(row["state"], 0) + int(row["n"])
    quiet = int(asked["quiet"][0]["n"])
    by_state["waiting"] = by_state.get("waiting", 0) - quiet
    by_state["idle"] = by_state.get("idle", 0) + quiet
    return {
        "by_state": by_state,
        "failures_today": int(asked["failures_today"][0]["n"]),
        "errors": [
            {
                "code": row["error_code"],
                "messages": int(row["messages"]),
                "today": int(row["today"] or 0),
                "last_at": row["last_at"],
            }
            for row in asked["errors"]
        ],
        "funnel": {key: int(value) for key, value in asked["funnel"][0].items()},
        "fallbacks": {row["label"]: int(row["count"]) for row in asked["fallbacks"]},
        "agent_latency": asked["agent"],
        "added_latency": asked["added"],
        "since": since,
    }


async def _latency_by_hour(
    models: ReadModels, table: str, column: str, since: datetime
) -> list[LatencyHour]:
    hour_start = since.replace(minute=0, second=0, microsecond=0)
    if models.backend == "postgres":
        fractions = ", ".join(
            f"percentile_cont({q / 100}) WITHIN GROUP (ORDER BY {column}) AS p{q}"
            for q in PERCENTILES
        )
        rows = await models.query(
            f"SELECT hour, count(*) AS samples, {fractions} FROM {table}"
            f" WHERE hour >= ? AND {column} IS NOT NULL GROUP BY hour ORDER BY hour",
            hour_start,
        )
        return [
            LatencyHour(
                row["hour"],
                int(row["samples"]),
                float(row["p50"]),
                float(row["p95"]),
                float(row["p99"]),
            )
            for row in rows
        ]
    samples = await models.query(
        f"SELECT hour, {column} AS value FROM {table} WHERE hour >= ? AND {column} IS NOT NULL",
        hour_start,
        types={"hour": "time"},
    )
    by_hour: dict[datetime, list[float]] = {}
    for row in samples:
        by_hour.setdefault(row["hour"], []).append(float(row["value"]))
    found = []
    for hour, values in sorted(by_hour.items()):
        values.sort()
        found.append(
            LatencyHour(
                hour,
                len(values),
                percentile(values, 50),
                percentile(values, 95),
                percentile(values, 99),
            )
        )
    return found


# -- calls --------------------------------------------------------------------------------
@attrs.frozen
class CallsPage:
    batches: list[Row]
    calls: list[Row]
    recipients: list[Row]
    next: int | None


async def calls_page(
    models: ReadModels,
    *,
    batch_id: str | None = None,
    before: int | None = None,
    limit: int = PAGE_SIZE,
) -> CallsPage:
    """Batches (newest first), and calls (newest first, of one batch if asked) with what
    became of their follow-up; with a batch, its recipients too."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"a page has 1 to {MAX_PAGE} calls, not {limit}")
    batches = await models.query(
        "SELECT batch_id, agent_id, name, recipients, status, created_at, seen_at,"
        " finished_at, settled, completed, voicemail, failed, cancelled, retry_count"
        " FROM console_batches"
        + (" WHERE batch_id = ?" if batch_id is not None else "")
        + " ORDER BY seen_at DESC, batch_id LIMIT 20",
        *([batch_id] if batch_id is not None else []),
        types=_types(BATCHES),
    )
    if batch_id is not None and not batches:
        raise NotFound(f"no batch {batch_id}")
    where: list[str] = []
    params: list[Any] = []
    if batch_id is not None:
        where.append("c.batch_id = ?")
        params.append(batch_id)
    if before is not None:
        where.append("c.position < ?")
        params.append(before)
    calls = await models.query(
        "SELECT c.conversation_id, c.phone, c.outcome, c.customer_name, c.summary, c.reason,"
        " c.batch_id, c.ended_at, c.source, c.follow_up, c.recorded_at, c.position,"
        " p.name FROM console_calls c LEFT JOIN console_people p ON p.phone = c.phone"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY c.position DESC LIMIT ?",
        *params,
        limit + 1,
        types=_types(CALLS, PEOPLE),
    )
    more = len(calls) > limit
    calls = calls[:limit]
    await _with_followups(models, calls)
    recipients: list[Row] = []
    if batch_id is not None:
        recipients = await models.query(
            "SELECT recipient_id, conversation_id, phone, outcome, call_record, detail,"
            " settled_at FROM console_recipients WHERE batch_id = ? ORDER BY position LIMIT 1000",
            batch_id,
            types=_types(RECIPIENTS),
        )
    return CallsPage(batches, calls, recipients, calls[-1]["position"] if more and calls else None)


async def _with_followups(models: ReadModels, calls: list[Row]) -> None:
    """Each call's ``followup``: its first message and that message's delivery status."""
    ids = [call["conversation_id"] for call in calls]
    by_call: dict[str, Row] = {}
    if ids:
        rows = await models.query(
            "SELECT f.call_conversation_id, f.reply_id, f.template, f.status, f.message_sid,"
            " f.error_code, f.detail, f.requested_at, f.settled_at,"
            " m.status AS delivery, m.error_code AS delivery_code,"
            " m.error_message AS delivery_error"
            " FROM console_followups f LEFT JOIN message_history m ON m.message_id = f.message_sid"
            f" WHERE f.call_conversation_id IN ({', '.join('?' * len(ids))})"
            " ORDER BY f.requested_at",
            *ids,
            types=_types(FOLLOWUPS),
        )
        for row in rows:
            by_call[row["call_conversation_id"]] = row  # the latest wins
    for call in calls:
        call["followup"] = by_call.get(call["conversation_id"])


# -- failures, for a phone's page or the overview -----------------------------------------
async def recent_failures(models: ReadModels, *, limit: int = 10) -> list[Row]:
    return await models.query(
        "SELECT message_id, phone, error_code, detail, at FROM console_failures"
        " ORDER BY at DESC LIMIT ?",
        limit,
        types=_types(FAILURES),
    )


def jsonable(value: Any) -> Any:
    """Rows with times as ISO 8601 (for the tests and any JSON view)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
