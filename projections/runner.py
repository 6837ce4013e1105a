"""Keeping read models up to date: follow the log live, catch up, rebuild aside and swap.

One task follows every projection: it reads a page of the log in the store's safe order
after the projections' checkpoint (`ReadModels.read_log`: only the columns folds use, and
only the payloads of the event types they fold), folds it into each, writes the rows and
moves every checkpoint to the end of the page in one transaction (`ReadModels.project`),
and when the log has nothing more waits for the next commit (``wait_for_events``: NOTIFY
on PostgreSQL), then lets commits gather for ``live_interval`` before it reads again.
Projections whose checkpoints differ (one rebuilt, one set aside after a failure) are
paged separately until they meet again. A page
costs the same handful of statements whether it holds one event or five hundred, and the
service commits several times per message: without the pause the read models cost the
serving process a fifth of its CPU under load, for freshness nobody can see.

A projection that fails (a bug, the database away) is set aside, retried alone with
backoff and reported in `statistics`; it never stops the others or the service: read
models are secondary to the conversations.

Nor does one event stop a projection (``projections.parking``). When a page fails for a
reason other than the store being away, the projection reads ever smaller pages (half the
window that failed, at once) until the failure is one event alone; that event is tried
again with backoff (``actors.retry.backoff_delay``: 0.1 s, doubling) and after
`PARK_AFTER_TRIES` failed tries it is parked: recorded with its error in
``projection_parked_events`` in the transaction that moves the checkpoint past it, logged
as one line, and the projection goes on. A store that is away parks nothing: that is
retried as long as it takes. `retry_parked` (``aftercall projections retry``) applies
parked events again once their cause is fixed.

Several processes may run the same projections on one PostgreSQL: each page's checkpoint
check makes exactly one of them win it; the others re-read the checkpoint and go on.

A rebuild (`rebuild`, ``aftercall projections rebuild``) folds the whole log into aside
tables, one read feeding every projection, reading the next page and folding it while
the last one is written, and swaps them in once it has caught up. It runs beside the
live followers, in this process or another; a live follower that finds its checkpoint
moved by the swap simply continues from there. A projection whose tables were built by
an older version of its rules is rebuilt that way when its follower starts. A rebuild
that meets an event it cannot apply finishes page by page from there, parking as the
live follower does, so its tables and its parked events are those the live ones have.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Final, Literal

import attrs
import trio

from actors.groups import lone_leaf
from actors.retry import backoff_delay
from events.store import EventStore, RecordedEvent
from projections.console import CONSOLE_PROJECTION
from projections.conversations import CONVERSATIONS_PROJECTION
from projections.history import HISTORY
from projections.metrics import METRICS
from projections.model import Changes, LogPage, Projection, Recorded, RowSet
from projections.optouts import OPTOUTS_PROJECTION
from projections.parking import (
    PARK_AFTER_TRIES,
    ParkedEvent,
    error_message,
    error_text,
    error_type,
    is_transient,
    next_move,
)
from projections.postgres import is_schema_change
from projections.readmodels import (
    Checkpoint,
    CheckpointMoved,
    NoRebuild,
    ReadModels,
    Target,
    checkpoint_name,
)

logger = logging.getLogger(__name__)

ALL_PROJECTIONS: Final[tuple[Projection, ...]] = (
    HISTORY,
    CONVERSATIONS_PROJECTION,
    METRICS,
    OPTOUTS_PROJECTION,
    CONSOLE_PROJECTION,
)
#: Events read and written per transaction: large enough that a page costs a handful of
#: statements per million events, small enough that one page commits in well under a second.
PAGE_SIZE: Final = 5000
#: A rebuild's pages are larger: it is throughput, not latency, and fewer pages write
#: each busy row fewer times. 50,000 rebuilt a million events ~10% faster than 20,000
#: (less client CPU outside the fold, fewer collections) for ~100 MB more at its peak.
REBUILD_PAGE_SIZE: Final = 50_000
#: Rows a rebuild keeps in memory (roughly a kilobyte each) before it reads them instead:
#: for ``aftercall projections rebuild``, and for a rebuild the service starts itself,
#: which also reads smaller pages (modest memory beside the conversations).
MAX_CACHED_ROWS: Final = 1_500_000
SERVICE_CACHED_ROWS: Final = 200_000
SERVICE_REBUILD_PAGE_SIZE: Final = 20_000
_FIRST_RETRY: Final = 0.1
#: How long a caught-up follower lets new commits gather before it reads them: read
#: models are at most this much (plus a page's work) behind the log, and under load each
#: follower writes at most 1 / LIVE_INTERVAL pages per second.
LIVE_INTERVAL: Final = 0.1


class UnknownProjection(ValueError):
    """A projection name that is not one of `ALL_PROJECTIONS`."""


def select(names: Sequence[str] | None) -> tuple[Projection, ...]:
    """The projections with these names (all of them for None or empty)."""
    if not names:
        return ALL_PROJECTIONS
    by_name = {p.name: p for p in ALL_PROJECTIONS}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise UnknownProjection(
            f"no projection named {', '.join(unknown)}; there are {', '.join(by_name)}"
        )
    return tuple(by_name[name] for name in names)


@attrs.frozen
class RebuildReport:
    projections: tuple[str, ...]
    events: int
    position: int
    seconds: float
    #: Events the rebuilt projections have parked (see ``projections.parking``).
    parked: int = 0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.inf


async def rebuild(
    store: EventStore,
    models: ReadModels,
    projections: Sequence[Projection] = ALL_PROJECTIONS,
    *,
    page_size: int = REBUILD_PAGE_SIZE,
    on_page: Callable[[int, int], None] | None = None,
    max_cached_rows: int = MAX_CACHED_ROWS,
) -> RebuildReport:
    """Rebuild ``projections`` from position 0 into aside tables, then swap them in.

    One read of the log feeds every projection; each page is one transaction for all of
    them, and the live tables serve (and follow) until the swap. The aside tables start
    empty and only this rebuild writes them (their checkpoint says so on every page), so
    the rows it wrote are kept in memory: a page needs no reads, and the next page is
    read and folded while the last one is being written. Past ``max_cached_rows`` the
    memory is let go and each page reads the rows it needs, as the live runner does.
    ``on_page(events, position)`` reports progress after each commit.
    """
    started = trio.current_time()
    for projection in projections:
        await models.begin_rebuild(projection)
    caches: dict[str, RowSet] | None = {p.name: RowSet(p.tables) for p in projections}
    types = folded_types(projections)
    position = 0
    events = 0
    written = _Written()
    stalled: Exception | None = None
    pages_out, pages_in = trio.open_memory_channel[LogPage](1)
    writes_out, writes_in = trio.open_memory_channel[_Folded](1)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_pages, store, models, position, page_size, types, pages_out)
            nursery.start_soon(_write_pages, models, projections, writes_in, on_page, written)
            async with writes_out, pages_in:
                async for page in pages_in:
                    assert page.last is not None
                    events += page.read
                    if caches is None:
                        await writes_out.send(_Folded(position, page, None, events))
                    else:
                        try:
                            work = _fold_aside(projections, caches, position, page)
                        except Exception as exc:
                            if is_transient(exc):
                                raise
                            # An event of this page cannot be folded, and the cached rows
                            # hold part of the page: what came before it is written (the
                            # writer empties its queue), the rest goes the slow way below.
                            stalled = exc
                            break
                        await writes_out.send(_Folded(position, page, work, events))
                        if sum(len(rows) for rows in caches.values()) > max_cached_rows:
                            caches = None  # writes stay in order: later pages read committed rows
                    position = page.last
    except BaseExceptionGroup as group:
        # A page that could not be written (a value its table cannot hold): nothing of it
        # was, and every page before it was. Anything else stops the rebuild, as before.
        leaf = lone_leaf(group)
        if not isinstance(leaf, Exception) or not _blames_an_event(leaf):
            raise
        stalled = leaf
    finally:
        gc.unfreeze()
    if stalled is not None:
        logger.info(
            "rebuilding %s: a page after position %d failed (%s); going on from there the way"
            " the live projections do, parking the events that cannot be applied",
            ", ".join(p.name for p in projections),
            written.position,
            error_text(stalled),
        )
        finisher = ProjectionRunner(store, models, tuple(projections), page_size=page_size)
        read, position = await finisher._finish_aside(written, on_page)
        events = written.events + read
    async with trio.open_nursery() as swaps:  # index builds of different tables in parallel
        for projection in projections:
            swaps.start_soon(models.swap, projection)
    parked = await models.parked([p.name for p in projections])
    return RebuildReport(
        tuple(p.name for p in projections),
        events,
        position,
        trio.current_time() - started,
        len(parked),
    )


def _blames_an_event(exc: Exception) -> bool:
    """A failure worth looking for the event behind it: not the store away, not another
    rebuild that took the aside tables."""
    return not (is_transient(exc) or isinstance(exc, CheckpointMoved | NoRebuild))


def folded_types(projections: Sequence[Projection]) -> frozenset[str]:
    """The event types any of ``projections`` has a rule for: all a read needs to keep."""
    return frozenset(name for projection in projections for name in projection.rules)


def _fold_aside(
    projections: Sequence[Projection],
    caches: dict[str, RowSet],
    position: int,
    page: LogPage,
) -> list[tuple[Target, list[Changes]]]:
    """Decode one page and fold it into the rebuild's rows; what to write for each
    projection."""
    # Decoding and folding allocate a few objects per event and free nothing cyclic, yet
    # each allocation burst wakes the cycle collector, which then walks the page and
    # every cached row: more than the fold itself costs. It is paused for this
    # synchronous stretch only (no other task runs meanwhile).
    collecting = gc.isenabled()
    gc.disable()
    try:
        records = page.records
        work = []
        for projection in projections:
            rows = caches[projection.name]
            projection.fold(rows, records)
            work.append((Target(projection, position, aside=True), rows.take_changes()))
        # Collections triggered while reading and writing the next pages need not walk
        # the cached rows or this page again either: they live as long as the rebuild,
        # or until the page is written, and are freed by reference counting.
        gc.freeze()
        return work
    finally:
        if collecting:
            gc.enable()


@attrs.define
class _Written:
    """How far a rebuild's writer has committed (events of the log, and position)."""

    events: int = 0
    position: int = 0


@attrs.frozen
class _Folded:
    """A page on its way to its transaction: folded already, or to fold there (``work``
    None: the rows it needs are read in the transaction)."""

    expected: int
    page: LogPage
    work: list[tuple[Target, list[Changes]]] | None
    events: int


async def _write_pages(
    models: ReadModels,
    projections: Sequence[Projection],
    pages: trio.MemoryReceiveChannel[_Folded],
    on_page: Callable[[int, int], None] | None,
    written: _Written,
) -> None:
    # CheckpointMoved here means another rebuild of the same projection began: it has the
    # aside tables now, and this one stops.
    async with pages:
        async for folded in pages:
            last = folded.page.last
            assert last is not None
            if folded.work is not None:
                await models.write(folded.work, last)
            else:
                targets = [Target(p, folded.expected, aside=True) for p in projections]
                await models.project(targets, folded.page.records, last)
            written.events, written.position = folded.events, last
            if on_page is not None:
                on_page(folded.events, last)


async def _read_pages(
    store: EventStore,
    models: ReadModels,
    after: int,
    page_size: int,
    types: frozenset[str],
    send: trio.MemorySendChannel[LogPage],
) -> None:
    """Read ahead: the next page is read while the previous one is folded and written."""
    async with send:
        while True:
            page = await models.read_log(store, after, page_size, types)
            if page.last is None:
                return
            try:
                await send.send(page)
            except trio.BrokenResourceError:
                return  # the folding stopped at an event it cannot fold: no more pages
            after = page.last


@attrs.frozen
class ProjectionStatistics:
    """What one follower knows of its projection, cheaply (for /readyz and the API)."""

    name: str
    position: int | None
    pages: int
    events: int
    moved: int
    last_error: str | None
    #: Events this follower parked since it started (all that are: `ProjectionRunner.parked`).
    parked: int = 0


@attrs.define(eq=False)
class _Follower:
    projection: Projection
    #: Follows a rebuild's aside tables (a rebuild finishing page by page), not the live ones.
    aside: bool = False
    types: frozenset[str] = attrs.field(init=False)
    position: int | None = None
    pages: int = 0
    events: int = 0
    moved: int = 0
    parked: int = 0
    last_error: str | None = None
    #: After a failure: not before this (trio clock), and how long the next wait is.
    retry_at: float = -math.inf
    delay: float = _FIRST_RETRY
    #: One failure that looked like tables swapped under a cached statement was retried
    #: at once; the next is a failure like any other.
    retried_at_once: bool = False
    #: Looking for the event a page failed on: pages of at most ``window`` events of the
    #: log, until the checkpoint passes ``suspect_until`` (the end of the smallest window
    #: that failed); None: whole pages.
    window: int | None = None
    suspect_until: int = 0
    #: Failed tries of the event at ``tries_at``, alone in its window.
    tries: int = 0
    tries_at: int = 0

    def __attrs_post_init__(self) -> None:
        self.types = folded_types([self.projection])

    @property
    def checkpoint(self) -> str:
        return checkpoint_name(self.projection, aside=self.aside)


class _PageFailed(Exception):
    """A page that could not be projected: the error, with the window of the log it read
    (``read`` events up to ``last``) and the records it held for the projection (None: they
    could not even be decoded)."""

    def __init__(
        self, cause: Exception, read: int, last: int, records: list[Recorded] | None
    ) -> None:
        super().__init__(error_text(cause))
        self.cause = cause
        self.read = read
        self.last = last
        self.records = records

    @property
    def suspect(self) -> bool:
        """Could an event of the page be to blame? Not if the projection folds none of
        them; a payload that could not be decoded is."""
        return self.records is None or bool(self.records)


def _cause(exc: Exception) -> Exception:
    return exc.cause if isinstance(exc, _PageFailed) else exc


@attrs.define(eq=False)
class ProjectionRunner:
    """Follows every projection live; ``run`` is its one long-lived task."""

    store: EventStore
    models: ReadModels
    projections: tuple[Projection, ...] = ALL_PROJECTIONS
    page_size: int = PAGE_SIZE
    max_retry_delay: float = 5.0
    live_interval: float = LIVE_INTERVAL
    park_after: int = PARK_AFTER_TRIES
    _followers: dict[str, _Follower] = attrs.field(init=False)
    _advanced: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._followers = {p.name: _Follower(p) for p in self.projections}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow every projection until cancelled.

        Started once the read models' tables exist (an API query before them was a 500),
        not once they are built: catching up or rebuilding never blocks start-up.
        """
        await self.models.prepare(self.projections)
        task_status.started()
        await self._follow()

    async def catch_up(self) -> dict[str, int]:
        """Project everything committed so far, then return every checkpoint.

        For commands and tests: no waiting for new events. An event that cannot be applied
        is parked as the live runner would (after the same tries, with the same backoff);
        any other error is raised.
        """
        for follower in self._followers.values():
            await self._prepare(follower)
            await self._catch_up(follower)
        return self.positions()

    async def parked(self) -> list[ParkedEvent]:
        """The events the live projections have parked, in the order of the log: read from
        the read models' store, so those another process parked (or retried) count too."""
        return await self.models.parked([p.name for p in self.projections])

    def positions(self) -> dict[str, int]:
        return {name: f.position or 0 for name, f in self._followers.items()}

    async def wait_until(self, position: int, names: Sequence[str] | None = None) -> None:
        """Return once every projection (or those ``names``) has projected the log up to
        ``position``."""
        while True:
            positions = self.positions()
            if min(positions[name] for name in names or positions) >= position:
                return
            await self._advanced.wait()

    def statistics(self) -> list[ProjectionStatistics]:
        return [
            ProjectionStatistics(
                f.projection.name, f.position, f.pages, f.events, f.moved, f.last_error, f.parked
            )
            for f in self._followers.values()
        ]

    # -- following ------------------------------------------------------------------------
    async def _follow(self) -> None:
        """One task follows every projection: each page of the log is read once, for every
        projection whose checkpoint is where the page starts, and projected for all of
        them in one transaction (the service commits several times a message, and three
        reads, decodes and transactions per page were a tenth of its CPU).

        A projection that fails is set aside with its own backoff and retried alone, so a
        broken fold or a moved checkpoint never holds the others back; once it is back
        at their position it joins their pages again.
        """
        while True:
            now = trio.current_time()
            ready = [f for f in self._followers.values() if f.retry_at <= now]
            for follower in [f for f in ready if f.position is None]:
                if not await self._attempt(follower, self._prepare(follower)):
                    ready.remove(follower)
            if not ready:
                await trio.sleep_until(min(f.retry_at for f in self._followers.values()))
                continue
            start = min(f.position for f in ready if f.position is not None)
            group = [f for f in ready if f.position == start]
            # One looking for the event a page failed on reads small pages of its own.
            group = [f for f in group if f.window is not None][:1] or group
            try:
                more = await self._step(group)
            except Exception as exc:
                if len(group) == 1:
                    await self._failed(group[0], exc)
                    continue
                # Which one? Each alone, once: the sound ones go on, the other waits.
                for follower in group:
                    await self._attempt(follower, self._step([follower]))
                continue
            for follower in group:
                self._succeeded(follower)
            if more or len({f.position for f in ready}) > 1:
                continue  # a full page, or others to catch up with: read on at once
            await self._wait_for_news(group[0].position or start)

    async def _wait_for_news(self, position: int) -> None:
        """Until the log passes ``position`` (plus ``live_interval`` for commits to gather),
        or a projection set aside is due to be retried."""
        now = trio.current_time()
        retry = min(
            (f.retry_at for f in self._followers.values() if f.retry_at > now), default=math.inf
        )
        with trio.move_on_at(retry):
            await self.store.wait_for_events(position)
            await trio.sleep(self.live_interval)

    async def _attempt(self, follower: _Follower, work: Awaitable[object]) -> bool:
        try:
            await work
        except Exception as exc:
            await self._failed(follower, exc)
            return False
        self._succeeded(follower)
        return True

    def _succeeded(self, follower: _Follower) -> None:
        follower.last_error = None
        follower.delay = _FIRST_RETRY
        follower.retried_at_once = False

    async def _failed(self, follower: _Follower, exc: Exception) -> None:
        cause = _cause(exc)
        if is_schema_change(cause) and not follower.retried_at_once:
            follower.position = None  # re-read the checkpoint before the next page
            follower.retried_at_once = True  # tables swapped under a cached statement
            return
        try:
            if await self._isolate(follower, exc):
                return
        except Exception as parking:  # the store went away while it was being parked
            cause = parking
        follower.position = None  # re-read the checkpoint before the next page
        follower.last_error = error_text(cause)
        logger.warning(
            "projection %s failed (%s); retrying in %.1f s",
            follower.projection.name,
            follower.last_error,
            follower.delay,
        )
        follower.retry_at = trio.current_time() + follower.delay
        follower.delay = min(follower.delay * 2, self.max_retry_delay)

    async def _isolate(self, follower: _Follower, exc: Exception) -> bool:
        """Look for the event a page failed on, try it again, or park it (`next_move`).

        True when that is what this failure led to; False for a failure no event can be
        blamed for (the store away, a page of events the projection does not fold), which
        the caller handles as before. Nothing was written by the failed page (its
        transaction rolled back), so the checkpoint is still where the follower has it.
        """
        if not isinstance(exc, _PageFailed):
            return False
        if exc.last != follower.tries_at:
            follower.tries, follower.tries_at = 0, exc.last
        move = next_move(
            exc.cause,
            window=exc.read,
            suspect=exc.suspect,
            tries=follower.tries + 1,
            park_after=self.park_after,
        )
        if move == "retry":
            return False
        follower.suspect_until = exc.last
        if move == "narrow":
            # At once: it is a smaller page that is tried, not the same one again.
            follower.window = max(1, exc.read // 2)
            follower.retry_at = -math.inf
            logger.debug(
                "projection %s: a page of %d events up to position %d failed (%s);"
                " trying pages of %d",
                follower.projection.name,
                exc.read,
                exc.last,
                error_text(exc.cause),
                follower.window,
            )
            return True
        follower.window = 1
        follower.tries += 1
        follower.last_error = error_text(exc.cause)
        if move == "again":
            delay = backoff_delay(
                follower.tries, initial=_FIRST_RETRY, maximum=self.max_retry_delay
            )
            follower.retry_at = trio.current_time() + delay
            logger.debug(
                "projection %s: event %d failed (try %d of %d: %s); again in %.1f s",
                follower.projection.name,
                exc.last,
                follower.tries,
                self.park_after,
                follower.last_error,
                delay,
            )
            return True
        await self._park(follower, exc)
        return True

    async def _park(self, follower: _Follower, failure: _PageFailed) -> None:
        """Set the event of a one-event window aside and move the checkpoint past it."""
        assert follower.position is not None
        known = await _recorded(self.store, failure.last)
        page = failure.records[0] if failure.records else None
        seen: Recorded | None = known or page
        event = ParkedEvent(
            projection=follower.checkpoint,
            position=failure.last,
            stream="" if seen is None else seen.stream,
            event_id=None if known is None else str(known.event_id),
            type="" if seen is None else seen.type,
            error_type=error_type(failure.cause),
            error_message=error_message(failure.cause),
            attempts=follower.tries,
            parked_at=datetime.now(UTC),
        )
        target = Target(follower.projection, follower.position, aside=follower.aside)
        try:
            await self.models.park(target, event)
        except CheckpointMoved:
            if follower.aside:
                raise  # another rebuild of it began: it has the aside tables now
            # Another process went on meanwhile (and may have parked it): follow it.
            follower.moved += 1
            follower.position = None
            return
        # The one line an operator sees: no traceback, nothing repeated while it retried.
        logger.warning(
            "projection %s parked event %d (%s in %s, id %s) after %d tries: %s; it goes on"
            " without it (aftercall projections status lists it, aftercall projections retry"
            " applies it again)",
            event.projection,
            event.position,
            event.type or "?",
            event.stream or "?",
            event.event_id or "?",
            event.attempts,
            event.error,
        )
        follower.parked += 1
        follower.last_error = None
        follower.delay = _FIRST_RETRY
        self._advance(follower, event.position)

    async def _catch_up(
        self, follower: _Follower, on_page: Callable[[_Follower], None] | None = None
    ) -> None:
        """Project ``follower`` up to the end of the log as it is now, parking what cannot
        be applied (waiting out the backoff between tries); other errors are raised."""
        while True:
            if follower.position is None:
                await self._reposition(follower)
            failure: Exception | None = None
            try:
                more = await self._step([follower])
            except Exception as exc:
                if not await self._isolate(follower, exc):
                    failure = _cause(exc)
            else:
                self._succeeded(follower)
                if on_page is not None:
                    on_page(follower)
                if not more:
                    return
                continue
            if failure is not None:
                raise failure  # out of the handler: the error itself, not the wrapper
            await trio.sleep_until(max(follower.retry_at, trio.current_time()))

    async def _reposition(self, follower: _Follower) -> None:
        if not follower.aside:
            await self._prepare(follower)
            return
        checkpoint = (await self.models.checkpoints()).get(follower.checkpoint)
        if checkpoint is None:
            raise NoRebuild(f"projection {follower.projection.name} has no rebuild in progress")
        self._advance(follower, checkpoint.position)

    async def _finish_aside(
        self, written: _Written, on_page: Callable[[int, int], None] | None
    ) -> tuple[int, int]:
        """Finish a rebuild that met an event it cannot apply: each projection alone,
        page by page from its aside checkpoint, as the live ones follow theirs. Returns
        the events read (the most any projection read) and the last position."""

        def progress(follower: _Follower) -> None:
            if on_page is not None and follower.position is not None:
                on_page(written.events + follower.events, follower.position)

        followers = [_Follower(p, aside=True) for p in self.projections]
        for follower in followers:
            await self._catch_up(follower, progress)
        return (
            max(f.events for f in followers),
            max(f.position or written.position for f in followers),
        )

    async def _prepare(self, follower: _Follower) -> None:
        projection = follower.projection
        checkpoints = await self.models.prepare([projection])
        live = checkpoints[projection.name]
        if live.version != projection.version:
            logger.info(
                "projection %s was built by version %d, this is %d: rebuilding it aside",
                projection.name,
                live.version,
                projection.version,
            )
            await rebuild(
                self.store,
                self.models,
                [projection],
                page_size=SERVICE_REBUILD_PAGE_SIZE,  # in the service: modest memory
                max_cached_rows=SERVICE_CACHED_ROWS,
            )
            live = (await self.models.checkpoints())[projection.name]
        self._advance(follower, live.position)

    async def _step(self, group: Sequence[_Follower]) -> bool:
        """Project one page for every follower in ``group`` (all at the same position);
        False when they reached the end of the log as it was read (a page short of
        ``page_size``, or none), True when more may follow at once."""
        start = group[0].position
        assert start is not None
        assert all(f.position == start for f in group)
        types = folded_types([f.projection for f in group])
        limit = group[0].window or self.page_size  # a window: that follower alone
        page = await self.models.read_log(self.store, start, limit, types)
        if page.last is None:
            return False
        targets = [Target(f.projection, start, aside=f.aside) for f in group]
        records: list[Recorded] | None = None
        try:
            records = page.records
            position = await self.models.project(targets, records, page.last)
        except CheckpointMoved as exc:
            # Nothing was written. The one that moved follows its checkpoint (another
            # runner wrote this page, or a rebuild swapped); the others read again.
            for follower in group:
                if follower.checkpoint != exc.name:
                    continue
                if follower.aside:
                    raise  # another rebuild of it began: it has the aside tables now
                follower.moved += 1
                if exc.actual is None:
                    follower.position = None
                    await self._prepare(follower)
                else:
                    self._advance(follower, exc.actual)
            return True
        except Exception as exc:
            raise _PageFailed(exc, page.read, page.last, records) from exc
        for follower in group:
            follower.pages += 1
            follower.events += page.read
            self._advance(follower, position)
        return page.read >= limit

    def _advance(self, follower: _Follower, position: int) -> None:
        follower.position = position
        if follower.window is not None and position >= follower.suspect_until:
            follower.window = None  # past the window that failed: whole pages again
        self._advanced.set()
        self._advanced = trio.Event()


async def _recorded(store: EventStore, position: int) -> RecordedEvent | None:
    """The event at ``position`` as the store has it (its id, for a parked event's row);
    None if the store cannot decode it either."""
    try:
        found = await store.read_all(after=position - 1, limit=1)
    except Exception as exc:
        if is_transient(exc):
            raise
        return None
    return found[0] if found and found[0].position == position else None


@asynccontextmanager
async def open_projection_runner(
    store: EventStore, models: ReadModels, projections: Sequence[Projection] = ALL_PROJECTIONS
) -> AsyncIterator[ProjectionRunner]:
    """Read models that follow ``store`` live until the block ends."""
    async with trio.open_nursery() as nursery:
        runner = ProjectionRunner(store, models, tuple(projections))
        await nursery.start(runner.run)
        try:
            yield runner
        finally:
            nursery.cancel_scope.cancel()


# -- status -------------------------------------------------------------------------------
@attrs.frozen
class ProjectionStatus:
    """Where a projection stands against the log, for ``aftercall projections status``."""

    name: str
    version: int
    state: str  # live | behind | not built | needs rebuild
    position: int | None
    head: int
    behind: int  # log positions not yet projected (= events, unless writes rolled back)
    lag_seconds: float | None  # age of the oldest event not yet projected
    updated_at: datetime | None
    built_version: int | None
    rebuild_position: int | None  # a rebuild in progress has got this far
    #: Events it could not apply and went on without (``projections.parking``), log order.
    parked: tuple[ParkedEvent, ...] = ()


async def projection_status(
    store: EventStore,
    models: ReadModels,
    projections: Sequence[Projection] = ALL_PROJECTIONS,
    *,
    now: datetime | None = None,
) -> list[ProjectionStatus]:
    now = now or datetime.now(UTC)
    head = await store.head()
    checkpoints = await models.checkpoints()
    parked = await models.parked([p.name for p in projections])
    found: list[ProjectionStatus] = []
    for projection in projections:
        live: Checkpoint | None = checkpoints.get(projection.name)
        aside = checkpoints.get(checkpoint_name(projection, aside=True))
        position = None if live is None else live.position
        behind = head - (position or 0)
        lag = None
        if behind > 0:
            oldest = await store.read_all(after=position or 0, limit=1)
            if oldest:
                lag = max(0.0, (now - oldest[0].recorded_at).total_seconds())
        if live is None:
            state = "not built"
        elif live.version != projection.version:
            state = "needs rebuild"
        else:
            state = "live" if behind <= 0 else "behind"
        found.append(
            ProjectionStatus(
                name=projection.name,
                version=projection.version,
                state=state,
                position=position,
                head=head,
                behind=max(0, behind),
                lag_seconds=lag,
                updated_at=None if live is None else live.updated_at,
                built_version=None if live is None else live.version,
                rebuild_position=None if aside is None else aside.position,
                parked=tuple(e for e in parked if e.projection == projection.name),
            )
        )
    return found


# -- parked events, again ------------------------------------------------------------------
@attrs.frozen
class RetryOutcome:
    """What ``retry_parked`` did with one parked event.

    ``applied``: it applies now and is no longer parked; ``gone``: it was no longer parked
    when its turn came (another process retried it); ``parked``: it still fails, and
    ``event`` carries the newest error.
    """

    event: ParkedEvent
    result: Literal["applied", "gone", "parked"]


async def retry_parked(
    store: EventStore, models: ReadModels, projections: Sequence[Projection] = ALL_PROJECTIONS
) -> list[RetryOutcome]:
    """Apply the events ``projections`` parked, in the order of the log, once each: those
    that apply now are unparked (in the transaction that folds them), the others stay
    parked with their newest error. A store that is away raises, as anywhere else.

    A parked event is folded on top of the events that came after it (the checkpoint is
    past it): the rules are written so that order rarely matters (statuses only move
    forward, counters add), but where it does, ``rebuild`` folds every event in its place.
    """
    by_name = {p.name: p for p in projections}
    outcomes = []
    for event in await models.parked(list(by_name)):
        record = await _recorded(store, event.position)
        try:
            if record is None:
                raise LookupError(f"the log has no readable event at position {event.position}")
            applied = await models.apply_parked(by_name[event.projection], record)
        except Exception as exc:
            if is_transient(exc):
                raise
            event = attrs.evolve(
                event,
                error_type=error_type(exc),
                error_message=error_message(exc),
                attempts=event.attempts + 1,
            )
            await models.note_parked(event)
            outcomes.append(RetryOutcome(event, "parked"))
            continue
        outcomes.append(RetryOutcome(event, "applied" if applied else "gone"))
    return outcomes
