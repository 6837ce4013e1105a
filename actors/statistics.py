"""Frozen snapshots of the runtime's state, for metrics and the admin view.

Like ``trio``'s ``statistics()`` methods: cheap to take (no I/O, no lock), typed, and
immutable, so a metrics exporter or an admin page can hold one without holding the runtime.
Times are on the trio clock (``trio.current_time()``), which is what the runtime schedules
by; wall-clock times belong in events.
"""

from __future__ import annotations

from typing import Literal

import attrs

#: Where an activation is in its life:
#: ``waiting``: for the previous activation of the same id to finish, or for a cool-down;
#: ``activating``: folding its stream; ``idle``: waiting for a message or a timer;
#: ``handling``: handling one; ``restarting``: backing off after a crash;
#: ``stopping``: past the restart limit, recording the failure;
#: ``deactivating``: releasing its resources (passivation, stop or shutdown).
ActorState = Literal[
    "waiting", "activating", "idle", "handling", "restarting", "stopping", "deactivating"
]


@attrs.frozen
class Failure:
    """One crash: which actor, what was raised (type and a short message), when."""

    actor_id: str
    error_type: str
    error_message: str
    at: float
    #: Restarts inside the supervision window before this crash.
    restarts: int
    #: Whether this crash stopped the actor (past the restart limit).
    stopped: bool


@attrs.frozen
class ActorStatistics:
    """One activation of one actor."""

    actor_id: str
    state: ActorState
    mailbox_depth: int
    mailbox_size: int
    #: Tasks blocked in ``tell`` because the mailbox is full (backpressure in action).
    waiting_senders: int
    #: Messages from the mailbox handled by this activation (timers not included).
    messages_handled: int
    timer_firings: int
    timers_pending: int
    #: Crashes of this activation (each followed by a restart or a stop).
    crashes: int
    active_since: float | None
    #: When the last message from the mailbox was handled: passivation is due at
    #: ``idle_since + idle_timeout`` if no message comes.
    idle_since: float | None
    last_failure: Failure | None


@attrs.frozen
class RegistryStatistics:
    """The whole actor system."""

    #: Actors in the registry (their next message goes straight to their mailbox).
    active_actors: int
    #: Activations releasing their resources; a message for one of them starts a new
    #: activation that waits for this one to finish.
    deactivating_actors: int
    #: Stopped actors whose cool-down has not ended yet.
    cooling_down: int
    mailbox_depth_total: int
    mailbox_depth_max: int
    activations: int
    passivations: int
    restarts: int
    stops: int
    crashes: int
    messages_told: int
    messages_handled: int
    #: Handles cut short because shutdown's timeout passed.
    interrupted_by_shutdown: int
    last_failure: Failure | None
    closing: bool
