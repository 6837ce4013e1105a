"""Questions people ask of the read models, answered as plain JSON-ready values.

The same functions serve ``aftercall history|conversations|metrics`` and the HTTP API, so
both always say the same thing. Percentiles are computed here from the stored samples
(linear interpolation between closest ranks, as PostgreSQL's ``percentile_cont``), the
same way on both backends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from projections.conversations import CONVERSATIONS, STATES, effective_state
from projections.history import MESSAGES
from projections.metrics import COUNTERS, FUNNEL, REPLIES, TURNS
from projections.model import ColumnType, Row, Table
from projections.optouts import BLOCKED, OPTOUTS
from projections.readmodels import ReadModels

PERCENTILES: Final = (50, 95, 99)
MAX_LIMIT: Final = 1000
#: What ``--active`` / ``?active=true`` means: the follow-ups still going on.
ACTIVE_STATES: Final = ("active", "waiting")
#: What ``--waiting`` / ``?waiting=true`` means: conversations waiting for a person at the
#: business (asked for by the agent or the person; nobody has taken them over yet).
WAITING_STATES: Final = ("waiting_for_human",)


class NotFound(LookupError):
    """Nothing is known about what was asked for."""


def _types(table: Table) -> dict[str, ColumnType]:
    return {c.name: c.type for c in table.columns}


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with its times as ISO 8601 text."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


# -- history ------------------------------------------------------------------------------
_HISTORY_COLUMNS: Final = (
    "message_id, direction, message_sid, kind, body, media_count, status, error_code,"
    " error_message, call_conversation_id, in_reply_to, created_at, sent_at, delivered_at,"
    " read_at, failed_at, position"
)


async def history(models: ReadModels, phone: str, *, limit: int = 200) -> list[Row]:
    """The last ``limit`` messages with ``phone``, oldest first, in the order of the log."""
    rows = await models.query(
        f"SELECT {_HISTORY_COLUMNS} FROM message_history WHERE phone = ?"
        " ORDER BY position DESC, message_id DESC LIMIT ?",
        phone,
        _limit(limit),
        types=_types(MESSAGES),
    )
    rows.reverse()
    return rows


# -- conversations ------------------------------------------------------------------------
_CONVERSATION_COLUMNS: Final = (
    "phone, state, call_conversation_id, calls_completed, calls_failed, messages_in,"
    " messages_out, replies_failed, fallbacks, unanswered, pending_parts, last_inbound_at,"
    " last_inbound_text, last_outbound_at, last_outbound_text, window_ends_at,"
    " last_activity_at, last_error, last_error_at, started_at, updated_at, control,"
    " control_by, control_reason, control_since, opted_out, unreachable_code"
)


def _present(row: Row, now: datetime) -> Row:
    row["state"] = effective_state(row["state"], row["last_activity_at"], now)
    window = row.get("window_ends_at")
    row["window_open"] = window is not None and window > now
    return row


async def conversations(
    models: ReadModels,
    *,
    states: Sequence[str] = (),
    limit: int = 100,
    now: datetime | None = None,
) -> list[Row]:
    """Conversations, most recently active first; ``states`` filters by (effective) state."""
    now = now or datetime.now(UTC)
    wanted = set(states)
    unknown = wanted.difference(STATES)
    if unknown:
        raise ValueError(
            f"unknown state {', '.join(sorted(unknown))}; states are {', '.join(STATES)}"
        )
    stored = {"waiting" if state == "idle" else state for state in wanted}
    where = ""
    params: list[Any] = []
    if stored:
        where = f"WHERE state IN ({', '.join('?' * len(stored))})"
        params.extend(sorted(stored))
    limit = _limit(limit)
    found: list[Row] = []
    offset = 0
    # idle and waiting share a stored state: page until enough rows pass the filter.
    while len(found) < limit:
        rows = await models.query(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations {where}"
            " ORDER BY last_activity_at DESC NULLS LAST, phone LIMIT ? OFFSET ?",
            *params,
            limit,
            offset,
            types=_types(CONVERSATIONS),
        )
        for row in rows:
            row = _present(row, now)
            if not wanted or row["state"] in wanted:
                found.append(row)
        if len(rows) < limit:
            break
        offset += limit
    return found[:limit]


async def conversation(
    models: ReadModels, phone: str, *, messages: int = 50, now: datetime | None = None
) -> Row:
    """One phone's conversation with its latest messages; `NotFound` if it has none."""
    rows = await models.query(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE phone = ?",
        phone,
        types=_types(CONVERSATIONS),
    )
    if not rows:
        raise NotFound(f"no conversation with {phone}")
    row = _present(rows[0], now or datetime.now(UTC))
    row["messages"] = await history(models, phone, limit=messages)
    return row


# -- the opt-out list -----------------------------------------------------------------------
_OPTOUT_COLUMNS: Final = "phone, state, keyword, error_code, reason, since, message_sid, updated_at"


async def optouts(models: ReadModels, *, everyone: bool = False, limit: int = 1000) -> list[Row]:
    """The phones nothing is sent to (opted out, or unreachable), most recent first;
    ``everyone`` adds those who opted back in or wrote again since."""
    where = "" if everyone else f"WHERE state IN ({', '.join('?' * len(BLOCKED))})"
    params: list[Any] = [] if everyone else list(BLOCKED)
    return await models.query(
        f"SELECT {_OPTOUT_COLUMNS} FROM optouts {where}"
        " ORDER BY since DESC NULLS LAST, phone LIMIT ?",
        *params,
        _limit(limit),
        types=_types(OPTOUTS),
    )


# -- metrics ------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, interpolated like ``percentile_cont``."""
    if not sorted_values:
        raise ValueError("no values")
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(sorted_values[low])
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low))


def summarise(values: Iterable[float]) -> dict[str, Any]:
    ordered = sorted(values)
    summary: dict[str, Any] = {"count": len(ordered)}
    for q in PERCENTILES:
        summary[f"p{q}"] = round(percentile(ordered, q), 4) if ordered else None
    return summary


def _latency(samples: Iterable[tuple[datetime, float]]) -> dict[str, Any]:
    by_hour: dict[datetime, list[float]] = {}
    everything: list[float] = []
    for hour, value in samples:
        by_hour.setdefault(hour, []).append(value)
        everything.append(value)
    return {
        "overall": summarise(everything),
        "by_hour": [
            {"hour": hour.isoformat(), **summarise(values)}
            for hour, values in sorted(by_hour.items())
        ],
    }


async def metrics(models: ReadModels) -> dict[str, Any]:
    """Latencies, statuses, fallbacks, reopenings, Twilio errors and the funnel."""
    turns = await models.query("SELECT hour, agent_seconds FROM metric_turns", types=_types(TURNS))
    replies = await models.query(
        "SELECT hour, added_seconds, total_seconds FROM metric_replies"
        " WHERE added_seconds IS NOT NULL",
        types=_types(REPLIES),
    )
    statuses = await models.query(
        "SELECT direction, status, count(*) AS messages FROM metric_messages"
        " GROUP BY direction, status ORDER BY direction, status"
    )
    errors = await models.query(
        "SELECT error_code, count(*) AS messages FROM metric_messages"
        " WHERE error_code IS NOT NULL GROUP BY error_code ORDER BY count(*) DESC, error_code"
    )
    counters = await models.query(
        "SELECT metric, label, count FROM metric_counters ORDER BY metric, label",
        types=_types(COUNTERS),
    )
    funnel_rows = await models.query(
        "SELECT count(*) AS calls, count(first_message_at) AS first_message,"
        " count(replied_at) AS user_replied, count(continued_at) AS continued"
        " FROM metric_funnel",
        types=_types(FUNNEL),
    )
    counted: dict[str, dict[str, int]] = {}
    for row in counters:
        counted.setdefault(row["metric"], {})[row["label"]] = int(row["count"])
    by_status: dict[str, dict[str, int]] = {}
    for row in statuses:
        by_status.setdefault(row["direction"], {})[row["status"] or "unknown"] = int(
            row["messages"]
        )
    funnel = {k: int(v) for k, v in funnel_rows[0].items()}
    sessions = counted.get("agent_sessions", {})
    return {
        "agent_latency_seconds": _latency((row["hour"], row["agent_seconds"]) for row in turns),
        "added_latency_seconds": _latency((row["hour"], row["added_seconds"]) for row in replies),
        "messages_by_status": by_status,
        "fallbacks_by_reason": counted.get("fallbacks", {}),
        "agent_sessions": {
            "opened": sessions.get("opened", 0),
            "reopened": sessions.get("reopened", 0),
        },
        "twilio_errors": {str(row["error_code"]): int(row["messages"]) for row in errors},
        "calls": counted.get("calls", {}),
        "replies_by_kind": counted.get("replies", {}),
        "funnel": funnel,
    }


def _limit(limit: int) -> int:
    if limit < 1 or limit > MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    return limit
