"""How fast this machine runs Python right now: the yardstick for CPU figures.

These VMs' speed drifts: the same pure-Python loop measured 471 and 924 ns a few minutes
apart on one machine, idle both times, and every CPU-per-message figure moves with it.
A benchmark row probes the speed just before and just after its window and prints how
much slower than the reference the machine ran: a row at 1.6x is not comparable with one
at 1.1x. It is an indicator, not a correction: two probes a second apart can differ by a
third, so figures are not scaled by it; compare runs that alternate, in one sitting.

The probe is a fixed mix of what the services do all day in pure Python (calls, attribute
and dict access, small allocations, string formatting, a little JSON), timed with the
process's CPU clock over ~0.3 s. The mean, not the best round: the slowness comes and
goes within milliseconds (a best-of-many probe stayed at the quick speed while the
benchmark beside it ran twice as slow), and a benchmark lives with the mean.
"""

from __future__ import annotations

import json
import time
from typing import Final

#: What the probe took on a quick minute of these machines (µs per round); a row
#: measured at this speed has a factor of 1.0. Seen on one machine within an hour: 137-309.
REFERENCE_US: Final = 140.0
_ROUNDS: Final = 1000


class _Thing:
    __slots__ = ("count", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def bump(self, by: int) -> int:
        self.count += by
        return self.count


def _round() -> None:
    things = [_Thing(f"thing-{i}") for i in range(40)]
    table: dict[str, int] = {}
    for step in range(25):
        for thing in things:
            table[thing.name] = thing.bump(step)
    json.loads(json.dumps({"things": [t.name for t in things], "table": table}))


def probe() -> float:
    """µs of CPU per round of the fixed workload, the mean of many rounds."""
    started = time.process_time_ns()
    for _ in range(_ROUNDS):
        _round()
    return (time.process_time_ns() - started) / 1000 / _ROUNDS


def slowdown(before_us: float, after_us: float) -> float:
    """How much slower than the reference the machine ran over a window (1.0 = as fast),
    from probes at both ends of it."""
    return ((before_us + after_us) / 2) / REFERENCE_US
