"""What a person at the business does to a conversation: take it over, write, hand it back.

The HTTP API (``web.api``) and the operators' console call these; each folds the phone's
stream, checks the command against it with the rules in ``followup.conversation``
(``check_take_over``, ``check_operator_message``, ``check_hand_back``: a ``Refused`` says
why not, with the HTTP status to answer), and appends the operator's fact with the version
it folded as the expected version, so the check holds for the log the fact lands in. A
conflict (the phone actor, or another operator, wrote meanwhile) folds again and checks
again. The caller then wakes the phone actor, which does what follows from the fact (stays
silent, sends the operator's message through the outbox, answers again with the bot).

These facts are not the phone actor's decisions (``followup.phone.DECISIONS`` says why
that matters), and nothing here sends anything: an operator's message becomes a reply only
in the phone actor, with the same intent, send and outcome as the agent's replies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import attrs

from events.codec import decode, derived_id, to_new_event
from events.conversation import (
    HandedBack,
    HumanTookOver,
    OperatorMessageRequested,
    Template,
    operator_message_event_id,
    phone_stream,
)
from events.store import EventStore, NewEvent, WrongExpectedVersion
from followup.conversation import (
    ConversationState,
    Refused,
    apply,
    check_hand_back,
    check_operator_message,
    check_operator_template,
    check_take_over,
    first_message_template,
    operator_request_known,
)

#: How many times a command folds again after another writer got in first. The phone
#: actor writes a few events per message, so two or three tries is the busy case.
MAX_TRIES: Final = 10
#: The operator's name when the API caller gives none.
API_OPERATOR: Final = "api"


@attrs.frozen
class Done:
    """What a command appended (nothing when ``duplicate``: a retried request).

    ``version`` and ``last`` are what to hand the phone actor's wake-up (``last``: the
    last event appended, which the actor can fold without reading it back).
    """

    phone: str
    version: int
    events: tuple[Any, ...]
    duplicate: bool = False

    @property
    def last(self) -> Any:
        return self.events[-1] if self.events else None


async def fold_conversation(store: EventStore, phone: str) -> ConversationState:
    """The phone's conversation as the phone actor folds it (``version`` 0: none yet)."""
    state = ConversationState(phone)
    for record in await store.read_stream(phone_stream(phone)):
        apply(state, decode(record))
        state.version = record.version
    return state


async def take_over(
    store: EventStore, phone: str, operator: str, reason: str | None, now: datetime
) -> Done:
    """A person at the business takes the conversation: the bot says nothing from here."""
    for _ in range(MAX_TRIES):
        state = await fold_conversation(store, phone)
        check_take_over(state, operator)
        if state.control == "human":  # theirs already: nothing to record
            return Done(phone, state.version, (), duplicate=True)
        event = HumanTookOver(operator=operator, at=now, reason=reason)
        version = await _append(store, state, [to_new_event(event, metadata=_by(operator))])
        if version is not None:
            return Done(phone, version, (event,))
    raise _busy(phone)


async def hand_back(
    store: EventStore, phone: str, operator: str, now: datetime, reason: str | None = None
) -> Done:
    """The bot has the conversation again; its next session is primed with all of it."""
    for _ in range(MAX_TRIES):
        state = await fold_conversation(store, phone)
        check_hand_back(state)
        event = HandedBack(at=now, operator=operator, reason=reason)
        version = await _append(store, state, [to_new_event(event, metadata=_by(operator))])
        if version is not None:
            return Done(phone, version, (event,))
    raise _busy(phone)


async def request_operator_message(
    store: EventStore,
    phone: str,
    operator: str,
    text: str,
    now: datetime,
    idempotency_key: str | None = None,
) -> Done:
    """An operator's message for the person, sent by the phone actor.

    Writing to a conversation the bot has takes it over first (in the same append): the
    bot must not answer the person's reply to a person's message. With an
    ``idempotency_key`` a retried request records nothing the second time.
    """

    def message(state: ConversationState, request_id: str) -> OperatorMessageRequested:
        check_operator_message(state, now)
        return OperatorMessageRequested(request_id, operator, text, now)

    return await _request(store, phone, operator, now, idempotency_key, message)


async def request_operator_template(
    store: EventStore,
    phone: str,
    operator: str,
    template: TemplateSettings,
    now: datetime,
    idempotency_key: str | None = None,
) -> Done:
    """The approved follow-up template, sent by the phone actor: what an operator can send
    once WhatsApp's 24-hour window has closed (free text would not be delivered).

    It is the template of the first message after a call (the person's name, the call's
    summary), so it needs a call; it takes the conversation over like any operator message.
    """

    def message(state: ConversationState, request_id: str) -> OperatorMessageRequested:
        chosen = operator_template(state, template)
        return OperatorMessageRequested(
            request_id,
            operator,
            f"[approved template {chosen.content_sid}: {chosen.variables.get('2', '')}]",
            now,
            template=chosen,
        )

    return await _request(store, phone, operator, now, idempotency_key, message)


@attrs.frozen
class TemplateSettings:
    """The approved template an operator may send outside the window, if one is set."""

    content_sid: str | None
    #: In place of a name the call did not know (``aftercall.texts``).
    unnamed: str = "there"


def operator_template(state: ConversationState, template: TemplateSettings) -> Template:
    """The template for this conversation, or ``Refused`` saying why there is none."""
    check_operator_template(state)
    if not template.content_sid:
        raise Refused(
            422,
            "no approved template is configured (AFTERCALL_FIRST_MESSAGE_TEMPLATE_SID): "
            "nothing can be delivered outside the 24-hour window",
        )
    if state.call is None:
        raise Refused(
            422,
            "the approved template carries a call's summary, and this conversation had no "
            "call: wait for the person to write",
        )
    return first_message_template(state.call, template.content_sid, template.unnamed)


async def _request(
    store: EventStore,
    phone: str,
    operator: str,
    now: datetime,
    idempotency_key: str | None,
    message: Callable[[ConversationState, str], OperatorMessageRequested],
) -> Done:
    """Append ``message(state, request_id)`` (which checks it may go), taking the
    conversation over first when the bot has it; a request already in the log (a retry
    with the same idempotency key) records nothing again, whatever changed since."""
    request_id = (
        derived_id("operator-request", phone, idempotency_key).hex
        if idempotency_key is not None
        else uuid.uuid4().hex
    )
    for _ in range(MAX_TRIES):
        state = await fold_conversation(store, phone)
        if operator_request_known(state, request_id):
            return Done(phone, state.version, (), duplicate=True)
        request = message(state, request_id)
        events: list[Any] = []
        new: list[NewEvent] = []
        if state.control != "human":
            took = HumanTookOver(operator=operator, at=now, reason="wrote to the person")
            events.append(took)
            new.append(to_new_event(took, metadata=_by(operator)))
        events.append(request)
        new.append(
            to_new_event(
                request,
                event_id=operator_message_event_id(phone, idempotency_key)
                if idempotency_key is not None
                else None,
                metadata=_by(operator),
            )
        )
        version = await _append(store, state, new)
        if version is not None:
            return Done(phone, version, tuple(events))
    raise _busy(phone)


async def _append(store: EventStore, state: ConversationState, new: list[NewEvent]) -> int | None:
    """Append after the version folded; ``None`` when someone wrote first (fold again)."""
    try:
        result = await store.append(phone_stream(state.phone), new, state.version)
    except WrongExpectedVersion:
        return None
    return result.version


def _by(operator: str) -> dict[str, str]:
    return {"operator": operator}


def _busy(phone: str) -> Refused:
    return Refused(
        409, f"the conversation with {phone} kept changing while this was decided: try again"
    )
