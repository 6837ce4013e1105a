"""The actor runtime: registry, mailboxes, supervision, passivation, timers, shutdown.

An actor is an object with three coroutines (``activate``, ``handle``, ``deactivate``) and
an id (a phone number for the phone actor). The runtime gives each active actor one trio
task and one small bounded mailbox, and owns all of them in one nursery: nothing an actor
does outlives the ``open_actor_system`` block.

The log is the truth, the mailbox is a wake-up. A web handler appends a fact (a
``MessageReceived``) to the actor's stream and then tells the actor; the actor re-reads
its stream from the last version it folded and decides. So a message lost with a crash,
dropped by a stop or left in a mailbox at shutdown loses no work: the next activation folds
the whole stream and finds what is pending. The runtime leans on that: it never persists a
mailbox, and it gives an activation a way to wake itself (a timer at 0 s) when ``activate``
finds pending work.

Lifecycle of one actor id in one process::

    tell ──> waiting (previous activation still deactivating, or a cool-down)
         ──> activating (factory, ``activate``: fold the stream)
         ──> idle <──> handling (one message at a time)
         ──> deactivating (``deactivate``: close sockets) on passivation, stop, shutdown
    crash in activate/handle/a resource task ──> deactivate (if activate had finished)
         ──> a new instance after a backoff, the mailbox kept
         ──> or, past the restart limit: ``ActorStopped`` appended, cool-down

Memory: an idle actor costs its task (a coroutine waiting in ``receive``), its mailbox
(``actors.mailbox``, not a trio memory channel: that alone is ~2 KiB), the nursery for the
resources it owns, the cancel scope that carries its idle deadline, and the actor object:
about 6 KiB in all with trio 0.35 (``benchmarks/actors.py`` measures it).
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Final, Generic, Protocol, TypeAlias, TypeVar

import attrs
import trio

from actors.mailbox import Mailbox
from actors.statistics import ActorState, ActorStatistics, Failure, RegistryStatistics
from actors.supervision import Stop, SupervisionPolicy, decide_after_crash
from events.codec import to_new_event
from events.store import MAX_STREAM_NAME, EventStore
from events.supervision import ActorStopped, supervision_stream

logger = logging.getLogger(__name__)

M = TypeVar("M")

#: Longest actor id: the supervision stream ``supervision-<id>`` must be a valid stream name.
MAX_ACTOR_ID: Final = MAX_STREAM_NAME - len(supervision_stream(""))
#: Longest error message kept in a ``Failure`` or an ``ActorStopped`` event.
MAX_ERROR_MESSAGE: Final = 300
#: Extra time the whole shutdown gets past ``shutdown_timeout + deactivate_timeout`` before
#: whatever is still running is cancelled outright.
SHUTDOWN_GRACE: Final = 1.0


class ActorRuntimeError(Exception):
    """Base class of the errors the runtime raises on purpose."""


class ActorSystemClosed(ActorRuntimeError):
    """The system is shutting down: it takes no more messages.

    Nothing is lost by refusing: whatever the message stood for is in the log (the caller
    appended it first) and is picked up when the actor is next activated.
    """


class MailboxFull(ActorRuntimeError):
    """``tell_nowait`` found the actor's mailbox full."""

    def __init__(self, actor_id: str, size: int) -> None:
        super().__init__(f"the mailbox of actor {actor_id!r} is full ({size} messages)")
        self.actor_id = actor_id
        self.size = size


class InvalidActorId(ActorRuntimeError, ValueError):
    """An actor id that is empty, too long or contains white space."""


def validate_actor_id(actor_id: str) -> str:
    """Check an actor id can name a stream (``supervision-<id>``); return it unchanged."""
    if not isinstance(actor_id, str) or not actor_id:
        raise InvalidActorId("actor id is empty")
    if len(actor_id) > MAX_ACTOR_ID:
        raise InvalidActorId(f"actor id is {len(actor_id)} characters, the limit is {MAX_ACTOR_ID}")
    if any(c.isspace() for c in actor_id):
        raise InvalidActorId(f"actor id {actor_id!r} contains white space")
    return actor_id


_positive = attrs.validators.gt(0.0)
_non_negative = attrs.validators.ge(0.0)
_at_least_one = attrs.validators.ge(1)


@attrs.frozen
class ActorSettings:
    """Every knob of the runtime, with its default, in one place.

    Attributes:
        idle_timeout: seconds without a message from the mailbox after which an actor is
            passivated (30 minutes, between Orleans' 15 and a long WhatsApp pause).
            ``math.inf`` keeps actors until shutdown.
        mailbox_size: messages a mailbox holds before ``tell`` waits (backpressure). Small
            on purpose: a message is a wake-up, the work is in the log.
        shutdown_timeout: how long, at shutdown, an actor may go on with the message in
            hand before it is cancelled.
        deactivate_timeout: how long ``deactivate`` (closing sockets) and the recording of
            a stop may take.
        supervision: restarts, backoff and cool-down after crashes.
    """

    idle_timeout: float = attrs.field(default=1800.0, validator=_positive)
    mailbox_size: int = attrs.field(default=16, validator=_at_least_one)
    shutdown_timeout: float = attrs.field(default=10.0, validator=_non_negative)
    deactivate_timeout: float = attrs.field(default=5.0, validator=_non_negative)
    supervision: SupervisionPolicy = attrs.field(factory=SupervisionPolicy)


class Actor(Protocol[M]):
    """What the runtime drives. One instance per activation; a restart makes a new one.

    The runtime calls ``activate`` once, then ``handle`` one message at a time (never two
    at once), then ``deactivate`` once. An exception from ``activate`` or ``handle`` (or
    from a task in ``ctx.nursery``) is a crash: the instance is dropped and the supervisor
    decides what happens next.
    """

    async def activate(self, ctx: ActorContext[M]) -> None:
        """Recover state by folding the actor's stream; open nothing expensive yet.

        If the folded state shows work that was in hand when the previous activation ended
        (a crash, a stop, a shutdown), wake yourself with ``ctx.set_timer(name, 0, msg)``:
        the message that would have triggered it may be gone.
        """
        ...

    async def handle(self, message: M, ctx: ActorContext[M]) -> None:
        """Handle one message from the mailbox or from a timer."""
        ...

    async def deactivate(self, ctx: ActorContext[M]) -> None:
        """Release what the actor owns (close its WebSocket).

        Called once after a successful ``activate``, however the activation ends:
        passivation, shutdown, a stop, or a crash. Shielded from cancellation and bounded
        by ``ActorSettings.deactivate_timeout``; what it raises is logged, not restarted.
        """
        ...


#: Makes a fresh actor for an id; called at every activation and restart.
ActorFactory: TypeAlias = Callable[[str], Actor[M]]


class _Nothing(enum.Enum):
    NOTHING = enum.auto()


_NOTHING: Final = _Nothing.NOTHING


@attrs.define(eq=False)
class ActorContext(Generic[M]):
    """What the runtime gives one actor instance.

    Attributes:
        actor_id: the id the actor was told under (a phone number).
        store: the event store, to fold and append the actor's stream.
        nursery: for tasks the actor owns while it is active (the WebSocket reader). It is
            cancelled after ``deactivate``; a task that raises crashes the actor.
    """

    actor_id: str
    store: EventStore
    nursery: trio.Nursery
    _timers: dict[str, tuple[float, M]] | None = attrs.field(default=None, init=False)
    #: The cancel scope the actor's task waits for its mailbox in, while it waits: a timer
    #: set meanwhile (from a task in ``nursery``) must shorten that wait.
    _waiting: trio.CancelScope | None = attrs.field(default=None, init=False)

    def now(self) -> float:
        """The trio clock (``MockClock`` in tests), which timers are set on."""
        return trio.current_time()

    def set_timer(self, name: str, delay: float, message: M) -> None:
        """Deliver ``message`` to this actor after ``delay`` seconds, replacing ``name``.

        A due timer is handled before the next message from the mailbox. Timers do not
        count as activity (an actor that only wakes itself is still idle and is
        passivated) and belong to this instance: a passivation, restart or stop drops them.
        A timer that must survive those is a fact for the log, re-armed in ``activate``.
        ``set_timer(name, 0, message)`` is how an actor wakes itself, e.g. from a task in
        ``nursery``.
        """
        if not delay >= 0:
            raise ValueError(f"timer {name!r}: delay must be >= 0, got {delay!r}")
        deadline = trio.current_time() + delay
        if self._timers is None:
            self._timers = {}
        self._timers.pop(name, None)  # re-set: it goes behind timers with the same deadline
        self._timers[name] = (deadline, message)
        if self._waiting is not None and deadline < self._waiting.deadline:
            self._waiting.deadline = deadline

    def cancel_timer(self, name: str) -> bool:
        """Cancel a timer; False if there was none by that name (it may have fired)."""
        if self._timers is None or name not in self._timers:
            return False
        del self._timers[name]
        return True

    def timer_deadline(self, name: str) -> float | None:
        """When the timer ``name`` fires (trio clock), or None if it is not set."""
        if self._timers is None or name not in self._timers:
            return None
        return self._timers[name][0]

    def _timer_count(self) -> int:
        return 0 if self._timers is None else len(self._timers)

    def _next_deadline(self) -> float:
        if not self._timers:
            return math.inf
        return min(deadline for deadline, _ in self._timers.values())

    def _pop_due(self, now: float) -> M | _Nothing:
        if not self._timers:
            return _NOTHING
        name, (deadline, message) = min(self._timers.items(), key=lambda item: item[1][0])
        if deadline > now:
            return _NOTHING
        del self._timers[name]
        return message


def describe_failure(error: BaseException) -> tuple[str, str]:
    """(type name, short message) of a crash, with single-exception groups unwrapped.

    Nurseries wrap what a task raises in an ``ExceptionGroup``; the interesting error is
    inside. The message is cut short: it goes into logs, statistics and an event.
    """
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    cls = type(error)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    message = str(error)
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 1] + "…"
    return name, message


@attrs.define(eq=False)
class _Activation(Generic[M]):
    """One actor id's stay in the registry: its mailbox, task and supervision history.

    It outlives restarts (the mailbox and the history carry over) and ends with a
    passivation, a stop or shutdown. Kept small: ten thousand of these sit idle at once.
    """

    system: ActorSystem[M]
    actor_id: str
    mailbox: Mailbox[M]
    predecessor: _Activation[M] | None = None
    state: ActorState = "waiting"
    ctx: ActorContext[M] | None = None
    #: The cancel scope of the current instance's nursery: shutdown gives it a deadline.
    scope: trio.CancelScope | None = None
    #: Created when the activation leaves the registry; set when its task has ended.
    done: trio.Event | None = None
    history: tuple[float, ...] = ()
    messages_handled: int = 0
    timer_firings: int = 0
    crashes: int = 0
    active_since: float | None = None
    idle_since: float | None = None
    last_failure: Failure | None = None

    async def run(self) -> None:
        """The activation's task: wait its turn, then live, restarting after crashes."""
        system = self.system
        try:
            if not await self._wait_turn():
                return
            while True:
                crash = await self._live()
                if crash is None or system._closing:
                    return
                decision = decide_after_crash(
                    system.settings.supervision,
                    self.history,
                    trio.current_time(),
                    system._rng,
                )
                self._record_crash(crash, decision)
                if isinstance(decision, Stop):
                    await self._stop(crash, decision)
                    return
                self.history = decision.history
                self.state = "restarting"
                system._restarts += 1
                with trio.move_on_after(decision.delay):
                    await system._closed.wait()
                    return  # shutdown began during the backoff
        finally:
            system._release(self)

    async def _wait_turn(self) -> bool:
        """Wait for the previous activation of this id to end, and for any cool-down.

        This is what keeps an id from being active twice: a message that arrives while the
        previous activation is still closing its sockets starts a new activation, which
        waits here before it folds the stream.
        """
        system = self.system
        predecessor, self.predecessor = self.predecessor, None
        if predecessor is not None and predecessor.done is not None:
            await predecessor.done.wait()
        until = system._cooling.pop(self.actor_id, None)
        if until is not None and until > trio.current_time():
            with trio.move_on_at(until):
                await system._closed.wait()
        return not system._closing

    async def _live(self) -> BaseException | None:
        """One actor instance from factory to deactivation; returns its crash, if any."""
        system = self.system
        self.state = "activating"
        activated = False
        try:
            actor = system.factory(self.actor_id)
            async with trio.open_nursery() as resources:
                # Shutdown bounds the message in hand by giving this scope a deadline: one
                # scope per instance rather than one per message. It cancels the actor's
                # own tasks too, which shutdown does right after anyway.
                self.scope = resources.cancel_scope
                if system._closing:
                    resources.cancel_scope.deadline = system._work_deadline
                ctx: ActorContext[M] = ActorContext(self.actor_id, system.store, resources)
                self.ctx = ctx
                try:
                    await self._work(actor.activate(ctx))
                    activated = True
                    now = trio.current_time()
                    self.active_since = now
                    if self.idle_since is None:
                        self.idle_since = now
                    await self._serve(actor, ctx)
                finally:
                    if activated:
                        await self._deactivate(actor, ctx)
                    resources.cancel_scope.cancel()
        except Exception as crash:
            return crash
        except BaseExceptionGroup as group:
            # Only the shutdown backstop cancels an actor's task from outside; a crash
            # that comes with it is reported, and the cancellation goes on.
            cancelled, rest = group.split(trio.Cancelled)
            if rest is not None:
                error_type, message = describe_failure(rest)
                logger.warning(
                    "actor %s crashed while being cancelled: %s: %s",
                    self.actor_id,
                    error_type,
                    message,
                )
            if cancelled is None:
                raise
            raise cancelled from None
        finally:
            self.ctx = None
            self.scope = None
        return None

    async def _work(self, work: Awaitable[None]) -> None:
        """Run ``activate`` or one ``handle``, counting it if shutdown's deadline cuts it."""
        try:
            await work
        except trio.Cancelled:
            if self.system._closing:
                self.system._interrupted += 1
            raise

    async def _serve(self, actor: Actor[M], ctx: ActorContext[M]) -> None:
        """Handle timers and messages one at a time until passivation or shutdown."""
        system = self.system
        idle_timeout = system.settings.idle_timeout
        mailbox = self.mailbox
        while not system._closing:
            timer = ctx._pop_due(trio.current_time())
            if not isinstance(timer, _Nothing):
                self.state = "handling"
                self.timer_firings += 1
                await self._work(actor.handle(timer, ctx))
                continue
            message: M | _Nothing = _NOTHING
            if mailbox.depth:
                # Busy: no waiting, so no deadline (a cancel scope per message costs).
                message = await mailbox.receive()
            else:
                assert self.idle_since is not None
                idle_deadline = self.idle_since + idle_timeout
                self.state = "idle"
                with trio.move_on_at(min(idle_deadline, ctx._next_deadline())) as waiting:
                    ctx._waiting = waiting
                    try:
                        message = await mailbox.receive()
                    except trio.EndOfChannel:  # closed by shutdown
                        return
                    finally:
                        ctx._waiting = None
                if isinstance(message, _Nothing):
                    # The wait timed out. A message that came in after the deadline fired
                    # (before this task ran again) is in the mailbox: not idle then.
                    if (
                        not mailbox.depth
                        and trio.current_time() >= idle_deadline
                        and not system._closing
                    ):
                        system._leave(self)
                        system._passivations += 1
                        return
                    continue  # a timer is due, or that message is waiting
            self.state = "handling"
            await self._work(actor.handle(message, ctx))
            self.messages_handled += 1
            system._handled += 1
            self.idle_since = trio.current_time()

    async def _deactivate(self, actor: Actor[M], ctx: ActorContext[M]) -> None:
        self.state = "deactivating"
        timeout = self.system.settings.deactivate_timeout
        with trio.CancelScope(shield=True, relative_deadline=timeout) as scope:
            try:
                await actor.deactivate(ctx)
            except Exception as exc:
                error_type, message = describe_failure(exc)
                logger.warning(
                    "deactivating actor %s failed: %s: %s", self.actor_id, error_type, message
                )
        if scope.cancelled_caught:
            logger.warning(
                "deactivating actor %s took longer than %ss: cancelled", self.actor_id, timeout
            )

    def _record_crash(self, crash: BaseException, decision: object) -> None:
        system = self.system
        error_type, message = describe_failure(crash)
        failure = Failure(
            actor_id=self.actor_id,
            error_type=error_type,
            error_message=message,
            at=trio.current_time(),
            restarts=len(self.history),
            stopped=isinstance(decision, Stop),
        )
        self.crashes += 1
        self.last_failure = failure
        system._crashes += 1
        system._last_failure = failure
        logger.warning(
            "actor %s crashed (%s: %s); %s",
            self.actor_id,
            error_type,
            message,
            "stopping it, restart limit reached" if failure.stopped else "restarting it",
            exc_info=crash,
        )

    async def _stop(self, crash: BaseException, decision: Stop) -> None:
        """Past the restart limit: leave the registry, start the cool-down, record why."""
        system = self.system
        self.state = "stopping"
        cooldown = system.settings.supervision.cooldown_seconds
        system._leave(self)
        system._start_cooldown(self.actor_id, trio.current_time() + cooldown)
        system._stops += 1
        # Messages that were waiting are the "next message" that brings the actor back
        # after the cool-down: hand them to a new activation, which waits it out.
        pending = self.mailbox.drain()
        if pending:
            successor = system._activation_for(self.actor_id)
            for waiting in pending:
                successor.mailbox.send_nowait(waiting)
        error_type, message = describe_failure(crash)
        event = ActorStopped(
            actor_id=self.actor_id,
            error_type=error_type,
            error_message=message,
            restarts=decision.restarts,
            cooldown_seconds=cooldown,
            at=system._wall_clock(),
        )
        with trio.move_on_after(system.settings.deactivate_timeout) as scope:
            try:
                await system.store.append(supervision_stream(self.actor_id), [to_new_event(event)])
            except Exception as exc:
                logger.error(
                    "could not record that actor %s was stopped: %s",
                    self.actor_id,
                    describe_failure(exc)[1],
                )
        if scope.cancelled_caught:
            logger.error("recording that actor %s was stopped timed out", self.actor_id)

    def statistics(self) -> ActorStatistics:
        mailbox = self.mailbox
        ctx = self.ctx
        return ActorStatistics(
            actor_id=self.actor_id,
            state=self.state,
            mailbox_depth=mailbox.depth,
            mailbox_size=mailbox.capacity,
            waiting_senders=mailbox.waiting_senders,
            messages_handled=self.messages_handled,
            timer_firings=self.timer_firings,
            timers_pending=0 if ctx is None else ctx._timer_count(),
            crashes=self.crashes,
            active_since=self.active_since,
            idle_since=self.idle_since,
            last_failure=self.last_failure,
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


@attrs.define(eq=False)
class ActorSystem(Generic[M]):
    """The registry of active actors and the nursery they run in.

    Made by ``open_actor_system``; one system runs one kind of actor (its factory), so the
    phone actors and the call monitor each get one, with their own settings.
    """

    factory: ActorFactory[M]
    store: EventStore
    settings: ActorSettings = attrs.field(factory=ActorSettings)
    _rng: random.Random = attrs.field(factory=random.Random)
    _wall_clock: Callable[[], datetime] = _utc_now
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _host_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _active: dict[str, _Activation[M]] = attrs.field(factory=dict, init=False)
    _leaving: dict[str, _Activation[M]] = attrs.field(factory=dict, init=False)
    _cooling: dict[str, float] = attrs.field(factory=dict, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _closed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _work_deadline: float = attrs.field(default=math.inf, init=False)
    _activations: int = attrs.field(default=0, init=False)
    _passivations: int = attrs.field(default=0, init=False)
    _restarts: int = attrs.field(default=0, init=False)
    _stops: int = attrs.field(default=0, init=False)
    _crashes: int = attrs.field(default=0, init=False)
    _told: int = attrs.field(default=0, init=False)
    _handled: int = attrs.field(default=0, init=False)
    _interrupted: int = attrs.field(default=0, init=False)
    _last_failure: Failure | None = attrs.field(default=None, init=False)

    # -- telling ---------------------------------------------------------------------------
    async def tell(self, actor_id: str, message: M) -> None:
        """Deliver ``message`` to the actor, activating it if needed; in order per sender.

        Waits while the mailbox is full (backpressure). Returns once the message is in the
        mailbox, not once it is handled. Raises ``ActorSystemClosed`` during shutdown and
        ``InvalidActorId`` for an id that cannot name a stream.
        """
        while True:
            activation = self._activation_for(actor_id)
            try:
                await activation.mailbox.send(message)
            except trio.ClosedResourceError:
                if self._closing:
                    raise ActorSystemClosed("the actor system is shutting down") from None
                # The actor was stopped while we waited for room: the message goes to the
                # next activation, which starts after the cool-down.
                continue
            self._told += 1
            return

    def tell_nowait(self, actor_id: str, message: M) -> None:
        """Like ``tell`` but never waits: raises ``MailboxFull`` instead."""
        activation = self._activation_for(actor_id)
        try:
            activation.mailbox.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(actor_id, self.settings.mailbox_size) from None
        self._told += 1

    def notify(self, actor_id: str, message: M) -> bool:
        """Wake the actor after appending to its stream; never waits, never fails on a full
        mailbox. Returns whether the message was queued.

        A full mailbox is not a loss here: the messages already queued will each make the
        actor re-read its stream, and the append happened before this call, so the actor
        sees it. This is what a web handler calls after appending a fact.
        """
        try:
            self.tell_nowait(actor_id, message)
        except MailboxFull:
            return False
        return True

    def _activation_for(self, actor_id: str) -> _Activation[M]:
        # No await in here: looking up and registering cannot interleave with another tell,
        # so however many tells race, one activation per id is registered.
        if self._closing:
            raise ActorSystemClosed("the actor system is shutting down")
        activation = self._active.get(actor_id)
        if activation is not None:
            return activation
        validate_actor_id(actor_id)
        assert self._nursery is not None, "use open_actor_system to run an actor system"
        activation = _Activation(
            self,
            actor_id,
            Mailbox(self.settings.mailbox_size),
            predecessor=self._leaving.get(actor_id),
        )
        self._active[actor_id] = activation
        self._activations += 1
        self._nursery.start_soon(activation.run, name=f"actor {actor_id}")
        return activation

    # -- lifecycle (called by activations) -----------------------------------------------
    def _leave(self, activation: _Activation[M]) -> None:
        """Take an activation out of the registry: the next tell starts a new one."""
        actor_id = activation.actor_id
        if self._active.get(actor_id) is activation:
            del self._active[actor_id]
        self._leaving[actor_id] = activation
        activation.done = trio.Event()
        # Tasks waiting for room get ClosedResourceError and tell the next activation.
        activation.mailbox.close()

    def _release(self, activation: _Activation[M]) -> None:
        """An activation's task has ended."""
        actor_id = activation.actor_id
        if self._active.get(actor_id) is activation:
            del self._active[actor_id]
        if self._leaving.get(actor_id) is activation:
            del self._leaving[actor_id]
        activation.mailbox.close()
        if activation.done is not None:
            activation.done.set()

    def _start_cooldown(self, actor_id: str, until: float) -> None:
        now = trio.current_time()
        for expired in [a for a, t in self._cooling.items() if t <= now]:
            del self._cooling[expired]
        self._cooling[actor_id] = until

    async def _host(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the actors' nursery, shielded: only the system's own shutdown ends actors.

        An outer cancellation (Ctrl-C, the server's scope) reaches the ``open_actor_system``
        block, whose exit starts the graceful shutdown below: actors finish the message in
        hand within ``shutdown_timeout`` instead of being cut at the first checkpoint.
        """
        with trio.CancelScope(shield=True) as scope:
            self._host_scope = scope
            async with trio.open_nursery() as actors:
                self._nursery = actors
                task_status.started()
                await self._closed.wait()

    def _shut_down(self) -> None:
        """Stop taking messages; let each actor finish the message in hand, then deactivate."""
        if self._closing:
            return
        self._closing = True
        settings = self.settings
        self._work_deadline = trio.current_time() + settings.shutdown_timeout
        self._closed.set()
        for activation in (*self._active.values(), *self._leaving.values()):
            activation.mailbox.close()  # idle actors wake with EndOfChannel
            scope = activation.scope
            if scope is not None:
                scope.deadline = min(scope.deadline, self._work_deadline)
        if self._host_scope is not None:
            self._host_scope.deadline = (
                self._work_deadline + settings.deactivate_timeout + SHUTDOWN_GRACE
            )

    # -- observing -------------------------------------------------------------------------
    def statistics(self) -> RegistryStatistics:
        depths = [activation.mailbox.depth for activation in self._active.values()]
        now = trio.current_time()
        return RegistryStatistics(
            active_actors=len(self._active),
            deactivating_actors=len(self._leaving),
            cooling_down=sum(1 for until in self._cooling.values() if until > now),
            mailbox_depth_total=sum(depths),
            mailbox_depth_max=max(depths, default=0),
            activations=self._activations,
            passivations=self._passivations,
            restarts=self._restarts,
            stops=self._stops,
            crashes=self._crashes,
            messages_told=self._told,
            messages_handled=self._handled,
            interrupted_by_shutdown=self._interrupted,
            last_failure=self._last_failure,
            closing=self._closing,
        )

    def actor_statistics(self, actor_id: str) -> ActorStatistics | None:
        """The registered activation of ``actor_id``, or None if it is not active."""
        activation = self._active.get(actor_id)
        return None if activation is None else activation.statistics()

    def actors(self) -> list[ActorStatistics]:
        """Every registered activation (for the admin view)."""
        return [activation.statistics() for activation in self._active.values()]

    def is_active(self, actor_id: str) -> bool:
        return actor_id in self._active


@asynccontextmanager
async def open_actor_system(
    factory: ActorFactory[M],
    store: EventStore,
    settings: ActorSettings | None = None,
    *,
    rng: random.Random | None = None,
    wall_clock: Callable[[], datetime] = _utc_now,
) -> AsyncIterator[ActorSystem[M]]:
    """Run an actor system for the duration of the block.

    Leaving the block (normally, by an exception or by cancellation) shuts the system down
    gracefully: ``tell`` refuses new messages, each actor finishes the message in hand
    (cancelled after ``shutdown_timeout``), deactivates, and the block exits once every
    actor task has ended. Messages still in mailboxes are dropped: what they stood for is
    in the log. ``rng`` (backoff jitter) and ``wall_clock`` (event times) are for tests.
    """
    system = ActorSystem(
        factory,
        store,
        settings if settings is not None else ActorSettings(),
        rng if rng is not None else random.Random(),
        wall_clock,
    )
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(system._host)
            try:
                yield system
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                system._shut_down()
    except BaseExceptionGroup as group:
        # The nursery wraps what the block raised; callers should see it as raised.
        if body_error is not None and group.exceptions == (body_error,):
            raise body_error from None
        raise
