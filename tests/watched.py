"""State a test waits on without a clock: whoever changes it says so."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio


@attrs.define(eq=False)
class Watched:
    """A base for test doubles whose state tests wait on.

    Whoever changes the state calls `changed`; `wait_for` re-checks its condition at each
    change, so a test waits exactly as long as it must, with no sleep and no polling.
    """

    _changed: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Block until ``condition()`` holds; re-checked whenever the state changes."""
        while not condition():
            await self._changed.wait()
