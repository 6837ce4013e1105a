"""Facts the actor runtime records about the actors it supervises.

They go to a stream of their own, ``supervision-<actor id>``, never to the actor's stream:
an actor is the one writer that decides on its stream and appends with the version it last
folded (``phone-+E164`` for a phone actor). A runtime event slipped into that stream would
make the actor's next append fail its expected-version check and would force every actor to
know the runtime's event types in its fold. A separate stream per actor keeps one writer per
stream (the process that runs the actor), stays readable next to the actor's own stream, and
shards with it when several processes share the log.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from events.codec import event_type

#: Stream category of the runtime's records about an actor.
SUPERVISION_CATEGORY = "supervision"


def supervision_stream(actor_id: str) -> str:
    """``+15551234567`` -> ``supervision-+15551234567``."""
    return f"{SUPERVISION_CATEGORY}-{actor_id}"


@event_type
@attrs.frozen
class ActorStopped:
    """An actor crashed more often than its supervision policy allows and was stopped.

    The next message for it activates it again once ``cooldown_seconds`` have passed.
    ``error_type`` and ``error_message`` describe the last crash; the message is cut short
    and comes from the exception, which by the project's rules never carries a secret.
    """

    actor_id: str
    error_type: str
    error_message: str
    restarts: int
    cooldown_seconds: float
    at: datetime
