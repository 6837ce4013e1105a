"""What the console's templates show, computed here so templates stay plain HTML.

Times, durations, state names, what a Twilio error means and what to do about it, which
page a stream belongs to, and the overview's latency chart as SVG. Every value that came
from outside (a message, a name, an error text) reaches the page through Jinja2's
autoescaping, including the chart's labels; nothing here builds markup from such a value.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import attrs

from events.store import stream_category

#: What an operator reads for each state of the conversations projection; a state added
#: there later shows under its own name until it is named here.
STATE_LABELS: Final[Mapping[str, str]] = {
    "active": "active",
    "waiting": "waiting for the customer",
    "idle": "idle (24 h quiet)",
    "failed": "failing",
    "waiting_for_human": "waiting for a human",
    "with_human": "with a human",
    "opted_out": "opted out",
    "unreachable": "unreachable",
}

#: Twilio errors seen on WhatsApp, what they mean and what to do (docs/reference/
#: twilio-whatsapp.md §3.4, with Twilio's pages); others link to Twilio's description.
TWILIO_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    63016: (
        "Outside the 24-hour customer-service window: free text is refused",
        "A template is needed: set AFTERCALL_FIRST_MESSAGE_TEMPLATE_SID to an approved "
        "template, or wait for the customer to write first.",
    ),
    63018: (
        "Rate limit exceeded for the WhatsApp channel",
        "Send more slowly or raise the sender's messaging tier; aftercall retries later.",
    ),
    63038: (
        "The account reached its daily message limit (rolling 24 h)",
        "Ask Twilio/Meta to raise the limit; messages resume when the window rolls.",
    ),
    63017: (
        "The account sends more than its combined messages-per-second limit",
        "Spread the load; ask Twilio to raise the limit.",
    ),
    63015: (
        "Sandbox: the recipient has not joined the WhatsApp sandbox",
        "The customer must send the sandbox's join code first (Twilio's WhatsApp sandbox).",
    ),
    63007: (
        "The From address is not a WhatsApp sender of this account",
        "Check TWILIO_WHATSAPP_FROM (whatsapp:+E164 of an approved sender).",
    ),
    63003: (
        "WhatsApp could not reach the To address (not a WhatsApp number?)",
        "Check the number; the customer may not use WhatsApp.",
    ),
    21211: ("Invalid 'To' phone number", "Check the number recorded for the call."),
    21610: (
        "The recipient unsubscribed (replied STOP)",
        "Do not message them again unless they opt back in.",
    ),
    21617: ("The message body exceeds 1,600 characters", "A bug: report it (aftercall splits)."),
    21658: ("A parameter exceeded its character limit", "A bug: report it with the event."),
    20003: (
        "Twilio refused the credentials",
        "Check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN.",
    ),
    20429: (
        "Too many requests to Twilio's API at once",
        "Nothing: aftercall backs off and retries.",
    ),
}

#: The timeline's kinds, as sentences' first words.
NOTE_LABELS: Final[Mapping[str, str]] = {
    "session_opened": "agent session opened",
    "session_reopened": "agent session renewed",
    "session_closed": "agent session closed",
    "agent_answered": "agent answered",
    "fallback": "fallback sent",
    "reply_delayed": "reply delayed",
    "reply_failed": "Twilio refused the reply",
    "actor_stopped": "conversation stopped by its supervisor",
    "human_requested": "a person asked for",
    "human_took_over": "taken over",
    "handed_back": "handed back to the bot",
    "opted_out": "opted out",
    "opted_in": "opted back in",
    "unreachable": "cannot receive WhatsApp messages",
    "reply_suppressed": "the agent's answer was not sent",
    "reply_withdrawn": "a reply was withdrawn",
    "first_message_skipped": "no first message after the call",
}

STATUS_LABELS: Final[Mapping[str, str]] = {
    "requested": "sending",
    "accepted": "accepted",
    "queued": "queued",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "undelivered": "undelivered",
    "canceled": "cancelled",
    "received": "received",
}


def state_label(state: str | None) -> str:
    if not state:
        return "unknown"
    return STATE_LABELS.get(state, state.replace("_", " "))


def error_meaning(code: int | None) -> tuple[str, str]:
    """(what it means, what to do) for a Twilio error code."""
    if code is None:
        return ("no error code", "See the error text.")
    known = TWILIO_ERRORS.get(code)
    if known is not None:
        return known
    return (f"Twilio error {code}", f"See https://www.twilio.com/docs/api/errors/{code}")


def when(moment: datetime | None, now: datetime | None = None) -> str:
    """``14:03:27`` today, ``Mar 4 14:03`` otherwise (UTC, said once in the page footer)."""
    if moment is None:
        return "—"
    moment = moment.astimezone(UTC)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if moment.date() == now.date():
        return moment.strftime("%H:%M:%S")
    if moment.year == now.year:
        return f"{moment:%b} {moment.day} {moment:%H:%M}"
    return moment.strftime("%Y-%m-%d %H:%M")


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def phone_url(phone: str) -> str:
    """The conversation page of a phone (``+`` written as ``%2B``)."""
    return "/console/conversations/" + quote(phone, safe="")


def stream_link(stream: str) -> str | None:
    """The console page a stream belongs to, if any."""
    category = stream_category(stream)
    ident = stream.partition("-")[2]
    if category in ("phone", "delivery", "supervision") and ident.startswith("+"):
        return phone_url(ident)
    if category == "batch":
        return "/console/calls?batch=" + quote(ident, safe="")
    return None


_TEMPLATE_BODY: Final = re.compile(r"\[template (HX[0-9A-Za-z]+)\] (\{.*\})", re.DOTALL)


def template_of(body: str | None) -> tuple[str, list[tuple[str, str]]] | None:
    """(ContentSid, variables) of a template message as the history keeps it
    (``[template HX...] {'1': 'Ana', ...}``), or None for free text."""
    found = _TEMPLATE_BODY.fullmatch(body or "")
    if found is None:
        return None
    try:
        variables = ast.literal_eval(found.group(2))  # literals only: never runs code
    except (ValueError, SyntaxError, RecursionError):
        return None
    if not isinstance(variables, dict):
        return None
    return found.group(1), [(str(k), str(v)) for k, v in sorted(variables.items(), key=str)]


def pretty_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def transcript(tail: str | None) -> list[dict[str, str]]:
    if not tail:
        return []
    try:
        lines = json.loads(tail)
    except ValueError:
        return []
    return [line for line in lines if isinstance(line, dict)]


def followup(call: Mapping[str, Any]) -> tuple[str, str]:
    """(``yes``/``no``/``pending``, in words) for the calls page's "followed up?"."""
    first: Mapping[str, Any] | None = call.get("followup")
    if call.get("outcome") == "failed" and not call.get("follow_up"):
        return (
            "no",
            "No: the call did not connect, and failed calls are not followed up "
            "(AFTERCALL_FOLLOW_UP_FAILED_CALLS is off when it was reported).",
        )
    if first is None:
        return ("pending", "Not yet: no first message has been requested.")
    if first["status"] == "requested":
        return ("pending", "Sending the first message.")
    if first["status"] == "failed":
        code = first.get("error_code")
        meaning, todo = error_meaning(code)
        return ("no", f"No: Twilio refused the first message ({code}: {meaning}). {todo}")
    delivery = first.get("delivery")
    how = "template" if first.get("template") else "text"
    if delivery in ("failed", "undelivered", "canceled"):
        code = first.get("delivery_code")
        meaning, todo = error_meaning(code)
        return (
            "no",
            f"No: the first message ({how}) was not delivered ({code}: {meaning}). {todo}",
        )
    label = STATUS_LABELS.get(delivery or "sent", delivery or "sent")
    return ("yes", f"Yes: first message ({how}) {label}.")


def percent(part: int, whole: int) -> str:
    return "—" if not whole else f"{100 * part / whole:.0f}%"


# -- the latency chart ----------------------------------------------------------------------
@attrs.frozen
class Series:
    """One line of the chart: a label, its CSS class, its SVG polyline points, and each
    point again for a marker (an hour with samples between two without is a dot)."""

    label: str
    css: str
    points: str
    dots: tuple[tuple[float, float], ...]


@attrs.frozen
class Chart:
    """An SVG line chart, laid out here; the template only writes the numbers out."""

    width: int
    height: int
    series: tuple[Series, ...]
    y_ticks: tuple[tuple[float, str], ...]
    x_ticks: tuple[tuple[float, str], ...]
    empty: bool


def latency_chart(
    hours: Sequence[datetime],
    lines: Sequence[tuple[str, str, Mapping[datetime, float]]],
    *,
    width: int = 640,
    height: int = 220,
) -> Chart:
    """Lines (label, CSS class, value per hour) over ``hours``, on one seconds axis."""
    left, right, top, bottom = 48, 8, 8, 24
    values = [v for _, _, by_hour in lines for v in by_hour.values()]
    top_value = max(values, default=0.0)
    scale_max = _nice(top_value) if top_value > 0 else 1.0
    span_x = max(1, len(hours) - 1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(index: int) -> float:
        return left + plot_w * index / span_x

    def y(value: float) -> float:
        return top + plot_h * (1 - value / scale_max)

    series = []
    for label, css, by_hour in lines:
        dots = tuple(
            (round(x(i), 1), round(y(by_hour[hour]), 1))
            for i, hour in enumerate(hours)
            if hour in by_hour
        )
        points = " ".join(f"{px},{py}" for px, py in dots)
        series.append(Series(label, css, points, dots))
    y_ticks = tuple((y(scale_max * f), duration(scale_max * f)) for f in (0, 0.25, 0.5, 0.75, 1))
    step = max(1, len(hours) // 6)
    x_ticks = tuple(
        (x(i), hour.astimezone(UTC).strftime("%H:00"))
        for i, hour in enumerate(hours)
        if i % step == 0
    )
    return Chart(width, height, tuple(series), y_ticks, x_ticks, not values)


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    magnitude = 10 ** _floor_log10(value)
    for factor in (1, 2, 5, 10):
        if value <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _floor_log10(value: float) -> int:
    exponent = 0
    while value >= 10:
        value /= 10
        exponent += 1
    while value < 1:
        value *= 10
        exponent -= 1
    return exponent
