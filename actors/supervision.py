"""What happens after an actor crashes: restart it later, or stop it.

The rules are plain functions over values so they are tested without a clock or a task:
the runtime (``actors.runtime``) feeds them the restart history and the trio clock's time
and does what they say.

Why these defaults: OTP's supervisor default is 1 restart in 5 s, tuned for bugs that a
restart will not fix. A phone actor mostly crashes on the network (a dropped agent
session, a database fail-over), which a restart a moment later does fix, so the policy
allows more restarts (5 in 30 s) and spaces them out with exponential backoff. Jitter keeps
many actors hit by the same outage from retrying in lock-step. Past the limit the actor is
stopped and left alone for a cool-down, so one poisoned conversation cannot spin the CPU
or hammer an outside service.
"""

from __future__ import annotations

import random

import attrs

from actors.retry import backoff_delay

_non_negative = attrs.validators.ge(0.0)
_positive = attrs.validators.gt(0.0)
_fraction = attrs.validators.and_(attrs.validators.ge(0.0), attrs.validators.le(1.0))


@attrs.frozen
class SupervisionPolicy:
    """How often a crashed actor is restarted, how soon, and how long it rests when stopped.

    Attributes:
        max_restarts: restarts allowed within ``within_seconds``; the crash after that stops
            the actor. 0 stops it at its first crash.
        within_seconds: the sliding window the restarts are counted in.
        backoff_initial: delay before the first restart in a window; it doubles for each
            further restart in the same window, up to ``backoff_max``.
        backoff_max: the longest delay before a restart.
        jitter: fraction of each delay drawn at random: the delay is uniform in
            ``[d * (1 - jitter), d]``. 0 makes the delays exact (useful in tests).
        cooldown_seconds: after a stop, how long the next message for the actor waits
            before the actor is activated again.
    """

    max_restarts: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    within_seconds: float = attrs.field(default=30.0, validator=_positive)
    backoff_initial: float = attrs.field(default=0.1, validator=_non_negative)
    backoff_max: float = attrs.field(default=10.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.2, validator=_fraction)
    cooldown_seconds: float = attrs.field(default=60.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) is below backoff_initial "
                f"({self.backoff_initial})"
            )


@attrs.frozen
class Restart:
    """Restart the actor after ``delay`` seconds; ``history`` is the new restart history."""

    delay: float
    history: tuple[float, ...]


@attrs.frozen
class Stop:
    """Stop the actor: it crashed again after ``restarts`` restarts inside the window."""

    restarts: int


def decide_after_crash(
    policy: SupervisionPolicy,
    history: tuple[float, ...],
    now: float,
    rng: random.Random,
) -> Restart | Stop:
    """Restart or stop, given the times (trio clock) of the restarts so far.

    Only restarts inside the sliding window count, so an actor that crashes once an hour
    is restarted every time, while one that crashes in a loop is stopped after
    ``max_restarts`` restarts.
    """
    recent = tuple(t for t in history if now - t < policy.within_seconds)
    if len(recent) >= policy.max_restarts:
        return Stop(restarts=len(recent))
    delay = backoff_delay(
        len(recent) + 1,
        initial=policy.backoff_initial,
        maximum=policy.backoff_max,
        jitter=policy.jitter,
        rng=rng,
    )
    return Restart(delay=delay, history=(*recent, now))
