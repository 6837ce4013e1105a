"""Actors: one supervised Trio task per phone number, activated by its first message.

The runtime (``open_actor_system``, ``ActorSystem.tell``) is independent of what an actor
does: it knows nothing of phones (the phone actor is in ``followup``). See
``actors.runtime`` for the lifecycle and ``actors.stream`` for how an actor folds and
appends its stream. The log is the truth and the mailbox only a wake-up: append the fact
first, then tell (or ``notify``) the actor.
"""

from actors.retry import backoff_delay
from actors.runtime import (
    MAX_ACTOR_ID,
    Actor,
    ActorContext,
    ActorFactory,
    ActorRuntimeError,
    ActorSettings,
    ActorSystem,
    ActorSystemClosed,
    InvalidActorId,
    MailboxFull,
    describe_failure,
    open_actor_system,
    validate_actor_id,
)
from actors.statistics import ActorState, ActorStatistics, Failure, RegistryStatistics
from actors.stream import FoldedStream
from actors.supervision import Restart, Stop, SupervisionPolicy, decide_after_crash

__all__ = [
    "MAX_ACTOR_ID",
    "Actor",
    "ActorContext",
    "ActorFactory",
    "ActorRuntimeError",
    "ActorSettings",
    "ActorState",
    "ActorStatistics",
    "ActorSystem",
    "ActorSystemClosed",
    "Failure",
    "FoldedStream",
    "InvalidActorId",
    "MailboxFull",
    "RegistryStatistics",
    "Restart",
    "Stop",
    "SupervisionPolicy",
    "backoff_delay",
    "decide_after_crash",
    "describe_failure",
    "open_actor_system",
    "validate_actor_id",
]
