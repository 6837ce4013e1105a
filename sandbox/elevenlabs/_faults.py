"""Faults the stand-in can inject, as one frozen value.

A fault set is looked up when it is needed (at the handshake, at each turn, at each webhook
delivery), so a test may change it while a session is live and the next turn obeys.
Precedence, most specific first: the live session's faults, the faults queued for the next
connection (which become that session's faults), the agent's faults, the global faults.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Faults:
    """What goes wrong, and how.

    Attributes:
        reply_delay_seconds: Wait this long (trio clock) before answering a user turn.
        no_answer: Swallow user turns: no ``agent_response`` at all.
        empty_answer: Answer with ``agent_response`` whose text is ``""``.
        close_mid_turn: Close the socket with this code after a user turn arrives, before
            the answer (after the ``start`` part when text streaming is on).
        refuse_status: Answer the WS handshake and ``get-signed-url`` with this HTTP status
            (429 or 503, as a busy or overloaded service does).
        refuse_count: How many refusals before accepting again; ``None`` refuses forever.
        duplicate_webhooks: Deliver every post-call webhook twice, as at-least-once
            delivery may.
    """

    reply_delay_seconds: float = 0.0
    no_answer: bool = False
    empty_answer: bool = False
    close_mid_turn: int | None = None
    refuse_status: int | None = None
    refuse_count: int | None = None
    duplicate_webhooks: bool = False

    def after_refusal(self) -> Faults:
        """The fault set once one refusal has been spent."""
        if self.refuse_count is None:
            return self
        left = self.refuse_count - 1
        if left <= 0:
            return attrs.evolve(self, refuse_status=None, refuse_count=None)
        return attrs.evolve(self, refuse_count=left)


NO_FAULTS = Faults()
