"""Group commit: many concurrent appends, one transaction.

A commit costs a WAL flush and, on PostgreSQL under Trio, a crossing of the trio-asyncio
bridge (~0.4 ms of CPU each, docs/stack.md). Paying that once per append caps a
process near 2,000 appends per second; paying it once per *batch* of whatever is waiting
lifts the cap by the batch size. So appends are requests on a channel, one writer task
takes everything that is waiting, decides each request against the stream versions and
event ids already in the log (``plan_batch``, a plain function), writes the batch in one
transaction, and only then wakes each caller with its own outcome.

There is no artificial delay: while one batch is being written the next one gathers. Under
no load a batch has one request and the latency is one commit.

A caller cancelled while waiting does not withdraw its request (it may already be in a
transaction); the append may still commit. Event ids make a retry safe.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from uuid import UUID

import attrs
import trio

from events.store import (
    AppendResult,
    NewEvent,
    PartialDuplicate,
    StoreUnavailable,
    WrongExpectedVersion,
)


@attrs.define(eq=False)
class AppendRequest:
    """One caller's append, waiting for its batch to commit.

    The caller parks its own task (`wait`) and the writer reschedules it directly: one
    request, one waiter, so a `trio.Event` and its parking lot would be work for nothing
    on the hottest path of the log (measured: about a tenth of an append's instructions).
    """

    stream: str
    events: Sequence[NewEvent]
    expected_version: int | None
    #: (data, metadata) as JSON text, encoded by the caller's task before submitting, so a
    #: value that is not JSON fails that caller alone and the writer does no encoding.
    payloads: Sequence[tuple[str, str]] = ()
    result: AppendResult | None = None
    error: BaseException | None = None
    answered: bool = False
    _waiter: trio.lowlevel.Task | None = None

    def succeed(self, result: AppendResult) -> None:
        self.result = result
        self._answer()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._answer()

    def _answer(self) -> None:
        self.answered = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)

    async def wait(self) -> None:
        """Until answered. Cancelling the wait does not withdraw the request (it may be in
        a transaction already); the append may still commit."""
        if self.answered:
            await trio.lowlevel.checkpoint()
            return
        self._waiter = trio.lowlevel.current_task()

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


@attrs.frozen
class ExistingEvent:
    """Where an already-recorded event id lives (for duplicate detection)."""

    stream: str
    version: int
    position: int


@attrs.frozen
class PlannedRow:
    """A row to insert: the request it belongs to and its stream version."""

    request_index: int
    stream: str
    version: int
    event: NewEvent


@attrs.frozen
class BatchPlan:
    """What to write for a batch and how to answer each request.

    ``outcomes[i]`` is set for requests decided without writing (duplicate, conflict);
    requests with rows in ``rows`` are answered after the insert, from their positions.
    """

    rows: list[PlannedRow]
    outcomes: dict[int, AppendResult | BaseException]


def plan_batch(
    requests: Sequence[AppendRequest],
    current_versions: Mapping[str, int],
    existing: Mapping[UUID, ExistingEvent],
) -> BatchPlan:
    """Decide each request of a batch, in order, as if they had been appended one by one.

    ``current_versions`` holds the committed version of every stream in the batch (absent
    means empty); ``existing`` the already-recorded events among the batch's event ids.
    Requests later in the batch see the effect of earlier ones (same stream, same ids).
    """
    versions = dict(current_versions)
    seen: dict[UUID, ExistingEvent] = dict(existing)
    rows: list[PlannedRow] = []
    outcomes: dict[int, AppendResult | BaseException] = {}
    for index, request in enumerate(requests):
        ids = [event.event_id for event in request.events]
        known = [seen[i] for i in ids if i in seen]
        if known:
            if len(known) != len(ids):
                outcomes[index] = partial_duplicate(request, len(known))
            else:
                last = known[-1]
                outcomes[index] = AppendResult(
                    version=last.version, position=last.position, duplicate=True
                )
            continue
        version = versions.get(request.stream, 0)
        if request.expected_version is not None and request.expected_version != version:
            outcomes[index] = WrongExpectedVersion(
                request.stream, request.expected_version, version
            )
            continue
        for event in request.events:
            version += 1
            rows.append(PlannedRow(index, request.stream, version, event))
            # position unknown until insert; -1 marks "in this batch"
            seen[event.event_id] = ExistingEvent(request.stream, version, -1)
        versions[request.stream] = version
    return BatchPlan(rows=rows, outcomes=outcomes)


def partial_duplicate(request: AppendRequest, known: int) -> PartialDuplicate:
    """Some, not all, of a request's event ids are recorded: a caller's mistake."""
    return PartialDuplicate(
        f"append to {request.stream!r}: {known} of {len(request.events)} event ids "
        "are already recorded"
    )


def batch_answers(
    requests: Sequence[AppendRequest], plan: BatchPlan, positions: Sequence[int]
) -> list[AppendResult | BaseException]:
    """Each request's answer once its batch committed; ``positions[i]`` is ``plan.rows[i]``'s."""
    last: dict[int, tuple[int, int]] = {}
    for row, position in zip(plan.rows, positions, strict=True):
        last[row.request_index] = (row.version, position)
    answers: list[AppendResult | BaseException] = []
    for index, request in enumerate(requests):
        outcome = plan.outcomes.get(index)
        if isinstance(outcome, AppendResult) and outcome.position == -1:
            # duplicate of an event written earlier in this same batch
            outcome = _resolve_in_batch(request, plan, positions)
        if outcome is None:
            version, position = last[index]
            outcome = AppendResult(version=version, position=position)
        answers.append(outcome)
    return answers


def answer_batch(
    requests: Sequence[AppendRequest], plan: BatchPlan, positions: Sequence[int]
) -> None:
    """Wake every caller of a committed batch; ``positions[i]`` belongs to ``plan.rows[i]``."""
    for request, answer in zip(requests, batch_answers(requests, plan, positions), strict=True):
        if isinstance(answer, BaseException):
            request.fail(answer)
        else:
            request.succeed(answer)


def _resolve_in_batch(
    request: AppendRequest, plan: BatchPlan, positions: Sequence[int]
) -> AppendResult:
    wanted = request.events[-1].event_id
    for row, position in zip(plan.rows, positions, strict=True):
        if row.event.event_id == wanted:
            return AppendResult(version=row.version, position=position, duplicate=True)
    raise AssertionError("in-batch duplicate without its row")  # pragma: no cover


WriteBatch = Callable[[list[AppendRequest]], Awaitable[None]]


@attrs.define(eq=False)
class GroupCommitter:
    """Gathers appends from many tasks and hands them to ``write_batch`` in batches.

    With ``writers`` above one, batches may commit in another order than they were
    gathered: only appends that were concurrent anyway (no caller has two appends in
    flight through one await) can be reordered, and each batch is decided against what
    has committed before it.

    ``write_batch`` must answer every request it is given (succeed or fail); if it raises,
    every request of the batch fails with that error and the writer goes on.
    """

    write_batch: WriteBatch
    max_batch: int = 500
    #: Batches in flight at once. One is all a single-writer backend (SQLite) can use; a
    #: backend that decides each batch under its own lock on the server (PostgreSQL) may
    #: take more, so that one batch is gathered in Python while the server commits another
    #: (measured there: slower with 100 writers, so it keeps one).
    writers: int = 1
    _send: trio.MemorySendChannel[AppendRequest] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[AppendRequest] = attrs.field(init=False)
    batches: int = 0
    appends: int = 0
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        # Bounded: a flood of appends waits here instead of growing memory without limit.
        self._send, self._receive = trio.open_memory_channel[AppendRequest](self.max_batch * 4)

    async def submit(self, request: AppendRequest) -> AppendResult:
        try:
            # Waiting for the answer is this call's checkpoint; queueing need not be a
            # second one unless the queue is full (a schedule pass per append, measured).
            try:
                self._send.send_nowait(request)
            except trio.WouldBlock:
                await self._send.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise StoreUnavailable("the event store is closed") from exc
        await request.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer loops; end when ``close()`` was called and everything queued is written.

        Shielded from outside cancellation: when the whole service is being cancelled, the
        actors' last appends (closing their sessions) still need a writer, so the writer
        stops only when the store closes it, and then within ``close``'s deadline.
        """
        with trio.CancelScope(shield=True) as self._scope:
            async with self._receive, trio.open_nursery() as nursery:
                for _ in range(self.writers):
                    nursery.start_soon(self._writer_loop)
                task_status.started()

    async def _writer_loop(self) -> None:
        while True:
            try:
                batch = [await self._receive.receive()]
            except trio.EndOfChannel:
                return
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._write(batch)

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new appends; the writer finishes what is queued within ``timeout``
        seconds, then ``run`` returns."""
        self._send.close()
        if self._scope is not None:
            self._scope.deadline = trio.current_time() + timeout

    async def _write(self, batch: list[AppendRequest]) -> None:
        try:
            await self.write_batch(batch)
        except trio.Cancelled:
            for request in batch:
                if not request.answered:
                    request.fail(
                        StoreUnavailable("the event store shut down before this append finished")
                    )
            raise
        except Exception as exc:  # one bad batch must not stop the writer
            for request in batch:
                if not request.answered:
                    request.fail(exc)
        else:
            for request in batch:
                if not request.answered:  # pragma: no cover - write_batch contract
                    request.fail(RuntimeError("append was not answered by its batch"))
        self.batches += 1
        self.appends += len(batch)
