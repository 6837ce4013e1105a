"""An actor's mailbox: bounded, first in first out, many senders, one receiver.

Why not ``trio.open_memory_channel``: it is general (many receivers, clones, statistics)
and costs about 2 KiB per channel (a deque block, two ordered dicts, two channel objects
with their task sets). Ten thousand idle actors each hold a mailbox, and the floor is under
10 KiB per actor in all, so the mailbox is this small single-receiver queue built on the
same trio primitives (``wait_task_rescheduled``/``reschedule``) with the same semantics:
direct hand-off to a waiting receiver, senders wait in order while it is full, ``close``
wakes everyone.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import attrs
import outcome
import trio
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    Task,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    current_task,
    enable_ki_protection,
    reschedule,
    wait_task_rescheduled,
)

M = TypeVar("M")


@attrs.define(eq=False)
class Mailbox(Generic[M]):
    """Holds up to ``capacity`` messages for one receiving task.

    ``send`` waits while the mailbox is full (senders are served in the order they came);
    ``send_nowait`` raises ``trio.WouldBlock`` instead. After ``close``, senders get
    ``trio.ClosedResourceError`` (waiting ones too) and the receiver gets what is left,
    then ``trio.EndOfChannel``.
    """

    capacity: int
    _items: list[M] = attrs.field(factory=list, init=False)
    _receiver: Task | None = attrs.field(default=None, init=False)
    #: Senders waiting for room, in arrival order, with their message. None when there are
    #: none: an empty dict costs more than the rest of the mailbox.
    _senders: dict[Task, M] | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"a mailbox holds at least one message, not {self.capacity}")

    @property
    def depth(self) -> int:
        """Messages waiting in the mailbox (not counting senders waiting for room)."""
        return len(self._items)

    @property
    def waiting_senders(self) -> int:
        return 0 if self._senders is None else len(self._senders)

    @property
    def closed(self) -> bool:
        return self._closed

    @enable_ki_protection
    def send_nowait(self, message: M) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the mailbox is closed")
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            reschedule(receiver, outcome.Value(message))
        elif len(self._items) < self.capacity:
            self._items.append(message)
        else:
            raise trio.WouldBlock

    @enable_ki_protection
    async def send(self, message: M) -> None:
        await checkpoint_if_cancelled()
        try:
            self.send_nowait(message)
        except trio.WouldBlock:
            pass
        else:
            await cancel_shielded_checkpoint()
            return
        task = current_task()
        if self._senders is None:
            self._senders = {}
        self._senders[task] = message

        def abort(_: RaiseCancelT) -> Abort:
            self._forget_sender(task)
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    @enable_ki_protection
    def receive_nowait(self) -> M:
        if self._items:
            message = self._items.pop(0)
            if self._senders:
                # Room again: the longest-waiting sender's message goes in behind the rest.
                task = next(iter(self._senders))
                self._items.append(self._senders[task])
                self._forget_sender(task)
                reschedule(task)
            return message
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    @enable_ki_protection
    async def receive(self) -> M:
        await checkpoint_if_cancelled()
        try:
            message = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await cancel_shielded_checkpoint()
            return message
        if self._receiver is not None:
            raise trio.BusyResourceError("another task is already receiving from this mailbox")
        self._receiver = current_task()

        def abort(_: RaiseCancelT) -> Abort:
            self._receiver = None
            return Abort.SUCCEEDED

        received: M = await wait_task_rescheduled(abort)
        return received

    @enable_ki_protection
    def close(self) -> None:
        """Take no more messages; wake waiting senders (with an error) and the receiver."""
        if self._closed:
            return
        self._closed = True
        if self._senders is not None:
            for task in self._senders:
                reschedule(task, outcome.Error(trio.ClosedResourceError("the mailbox is closed")))
            self._senders = None
        if self._receiver is not None:
            # A receiver only waits on an empty mailbox: nothing is left to give it.
            reschedule(self._receiver, outcome.Error(trio.EndOfChannel()))
            self._receiver = None

    @enable_ki_protection
    def drain(self) -> list[M]:
        """Take every buffered message at once (to hand them to another mailbox)."""
        items, self._items = self._items, []
        return items

    def _forget_sender(self, task: Task) -> None:
        assert self._senders is not None
        del self._senders[task]
        if not self._senders:
            self._senders = None
