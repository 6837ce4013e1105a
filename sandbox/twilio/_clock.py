"""The stand-in's clock: trio's clock plus an offset a test can push forward.

Status callbacks and the 24-hour window both read trio's clock, so a test under
``autojump_clock`` sees a day pass in milliseconds. ``advance`` adds to the offset only:
nothing sleeps through it, it just makes every later reading (and every later wall-clock
date) a day older, which is how a test expires a WhatsApp window without waiting.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import trio


@attrs.define
class SandboxClock:
    """Seconds on trio's clock (plus ``offset``), and the wall-clock date they stand for.

    The wall-clock anchor is taken at the first reading inside trio, so a stand-in can be
    built before ``trio.run``.
    """

    offset: float = 0.0
    _anchor: tuple[float, datetime] | None = attrs.field(default=None, repr=False)

    def now(self) -> float:
        return trio.current_time() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self.offset += seconds

    def wall(self) -> datetime:
        """The current date (UTC) as Twilio would stamp it on a message."""
        now = self.now()
        if self._anchor is None:
            self._anchor = (now, datetime.now(UTC))
        trio_then, wall_then = self._anchor
        return wall_then + timedelta(seconds=now - trio_then)
