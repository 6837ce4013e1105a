"""Retry timing, as plain functions over values: how long to wait before trying again.

One rule for everything that retries (an actor's restart after a crash, a Twilio request
answered 429, an ElevenLabs call that timed out): an exponential ceiling, doubling from
``initial`` up to ``maximum``, with part of it drawn away at random so that many actors
that failed together do not come back in lock-step; and a ``Retry-After`` from the server
as a floor, never undercut.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Past this many doublings the ceiling is ``maximum`` anyway; the cap keeps ``2 ** n``
#: from overflowing a float for an absurd attempt number.
_MAX_DOUBLINGS = 64


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    jitter: float = 0.0,
    rng: random.Random | None = None,
    retry_after: float | None = None,
) -> float:
    """The pause before retry number ``attempt`` (1 for the first retry).

    The ceiling is ``initial * 2 ** (attempt - 1)``, at most ``maximum``. ``jitter`` is the
    share of the ceiling that may be drawn away at random (0: none, 1: "full jitter", a
    uniform draw in (0, ceiling]); it needs ``rng``. A ``retry_after`` (seconds, from the
    server) replaces the ceiling as a floor: that value plus a little jitter, never less.

    Raises:
        ValueError: ``attempt`` below 1, ``jitter`` outside [0, 1], or jitter without ``rng``.
    """
    if attempt < 1:
        raise ValueError(f"retry numbers start at 1, got {attempt}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be between 0 and 1, got {jitter}")
    if jitter and rng is None:
        raise ValueError("jitter needs a random number generator")
    ceiling = min(maximum, initial * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
    if retry_after is not None:
        spread = rng.uniform(0.0, min(initial, ceiling)) if rng is not None else 0.0
        return retry_after + spread
    if rng is None or not jitter:
        return ceiling
    return ceiling * (1.0 - jitter * rng.random())


def is_retryable_status(status: int) -> bool:
    """429 and 5xx are worth retrying; any other 4xx will fail the same way again."""
    return status == 429 or 500 <= status <= 599


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Returns None when the header is absent or unreadable (the caller falls back to its
    own backoff); a date in the past means "now" (0.0).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
