"""The read models of who may speak, on values: conversation states, the opt-out list, and
withdrawn replies in the history."""

from __future__ import annotations

from typing import Any

from events.conversation import (
    HandedBack,
    HumanRequested,
    HumanTookOver,
    MessageReceived,
    OptedIn,
    OptedOut,
    RecipientUnreachable,
    ReplyRequested,
    ReplyWithdrawn,
)
from projections.conversations import CONVERSATIONS_PROJECTION, STATES
from projections.history import HISTORY
from projections.optouts import OPTOUTS_PROJECTION
from tests.projections.test_folds import (
    ANA,
    ASKED,
    CALL,
    FIRST,
    FIRST_SENT,
    HELLO,
    at,
    fold,
    row,
)

STOP = MessageReceived("SM5", ANA, "STOP", at(20))


def conversation(*events: Any) -> dict[str, Any]:
    return row(fold(CONVERSATIONS_PROJECTION, *events), "conversations", ANA)


def test_who_has_the_conversation_comes_before_the_work_in_hand() -> None:
    assert {"waiting_for_human", "with_human", "opted_out", "unreachable"} <= set(STATES)
    asked = HumanRequested("agent", "asked for a human", at(12), turn_id="t1")
    waiting = conversation(CALL, FIRST, FIRST_SENT, HELLO, ASKED, asked)
    assert (waiting["state"], waiting["control_by"]) == ("waiting_for_human", "agent")
    taken = HumanTookOver("Maria", at(13), "VIP")
    with_human = conversation(CALL, FIRST, FIRST_SENT, HELLO, ASKED, asked, taken)
    assert (with_human["state"], with_human["control_by"], with_human["control_reason"]) == (
        "with_human",
        "Maria",
        "VIP",
    )
    assert with_human["control_since"] == at(13)
    back = conversation(CALL, FIRST, FIRST_SENT, HELLO, taken, HandedBack(at(14), "Maria"))
    # What Maria read is hers: nothing is left for the bot to answer.
    assert (back["state"], back["control"], back["unanswered"]) == ("waiting", "bot", 0)


def test_an_opt_out_and_an_opt_in_show_in_the_state() -> None:
    confirmation = ReplyRequested("r3", "optout_confirmation", ("Bye",), at(21), ("SM5",))
    out = conversation(CALL, FIRST, FIRST_SENT, STOP, OptedOut("SM5", "stop", at(21)), confirmation)
    assert (out["state"], out["opted_out"], out["unanswered"]) == ("opted_out", True, 0)
    start = MessageReceived("SM6", ANA, "START", at(30))
    back = conversation(
        CALL, FIRST, FIRST_SENT, STOP, OptedOut("SM5", "stop", at(21)),
        MessageReceived("SM7", ANA, "hello?", at(25)), start,
        OptedIn("SM6", "start", at(31), ("SM7",)),
    )  # fmt: skip
    assert (back["opted_out"], back["unanswered"]) == (False, 0)


def test_unreachable_until_the_person_writes() -> None:
    unreachable = RecipientUnreachable(63024, "invalid message recipient", at(3), "SM1")
    gone = conversation(CALL, FIRST, FIRST_SENT, unreachable)
    assert (gone["state"], gone["unreachable_code"]) == ("unreachable", 63024)
    assert gone["last_error"] == "Twilio 63024: invalid message recipient"
    back = conversation(CALL, FIRST, FIRST_SENT, unreachable, HELLO)
    assert (back["state"], back["unreachable_code"]) == ("active", None)


def test_a_withdrawn_reply_settles_its_parts() -> None:
    answer = ReplyRequested("r2", "agent", ("one", "two"), at(12), in_reply_to=("SM2",))
    withdrawn = ReplyWithdrawn("r2", (0, 1), "human", at(13))
    taken = HumanTookOver("Maria", at(12.5))
    rows = fold(CONVERSATIONS_PROJECTION, CALL, FIRST, FIRST_SENT, HELLO, taken, answer, withdrawn)
    assert row(rows, "conversations", ANA)["pending_parts"] == 0
    assert rows.get("conversation_outbox", "r2/0") is None
    history = fold(HISTORY, CALL, FIRST, FIRST_SENT, HELLO, answer, withdrawn)
    part = row(history, "message_history", "r2/1")
    assert (part["status"], part["error_message"], part["body"]) == (
        "withdrawn",
        "withdrawn: human",
        "two",
    )


def test_the_opt_out_list() -> None:
    def optout(*events: Any) -> dict[str, Any]:
        return row(fold(OPTOUTS_PROJECTION, *events), "optouts", ANA)

    out = optout(STOP, OptedOut("SM5", "baja", at(21)))
    assert (out["state"], out["keyword"], out["since"], out["message_sid"]) == (
        "opted_out",
        "baja",
        at(21),
        "SM5",
    )
    again = optout(STOP, OptedOut("SM5", "baja", at(21)), OptedIn("SM6", "alta", at(30)))
    assert (again["state"], again["keyword"]) == ("opted_in", "alta")
    blocked = RecipientUnreachable(21610, "unsubscribed recipient", at(40), reply_id="r9")
    unreachable = optout(blocked)
    assert (unreachable["state"], unreachable["error_code"]) == ("unreachable", 21610)
    assert optout(blocked, HELLO)["state"] == "reachable"
    # Twilio's word does not undo the person's own: still opted out, with the code noted.
    both = optout(STOP, OptedOut("SM5", "stop", at(21)), blocked)
    assert (both["state"], both["error_code"]) == ("opted_out", 21610)
    assert fold(OPTOUTS_PROJECTION, HELLO).get("optouts", ANA) is None  # nobody else listed
