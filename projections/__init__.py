"""Read models built from the event log: message history, conversations, metrics.

Each projection is a set of tables plus rules (plain functions per event type, see
``projections.model``) folded over the log in the store's safe order by the
`ProjectionRunner`, with its checkpoint in the same transaction as its rows. `rebuild`
builds one again from position 0 beside the live tables and swaps it in. The query
functions in ``projections.queries`` serve the CLI and the HTTP API alike.

Tables (PostgreSQL, or the SQLite file of the embedded store), readable with psql:
``message_history``, ``conversations``, ``metric_turns``, ``metric_replies``,
``metric_messages``, ``metric_counters``, ``metric_funnel``, their checkpoints in
``projection_checkpoints``, and the events a projection could not apply and went on
without in ``projection_parked_events`` (``projections.parking``; `retry_parked` applies
them again).
"""

from projections.conversations import CONVERSATIONS_PROJECTION
from projections.history import HISTORY
from projections.metrics import METRICS
from projections.parking import ParkedEvent
from projections.readmodels import Checkpoint, CheckpointMoved, ReadModels
from projections.runner import (
    ALL_PROJECTIONS,
    ProjectionRunner,
    ProjectionStatus,
    RebuildReport,
    RetryOutcome,
    open_projection_runner,
    projection_status,
    rebuild,
    retry_parked,
)

__all__ = [
    "ALL_PROJECTIONS",
    "CONVERSATIONS_PROJECTION",
    "HISTORY",
    "METRICS",
    "Checkpoint",
    "CheckpointMoved",
    "ParkedEvent",
    "ProjectionRunner",
    "ProjectionStatus",
    "ReadModels",
    "RebuildReport",
    "RetryOutcome",
    "open_projection_runner",
    "projection_status",
    "rebuild",
    "retry_parked",
]
