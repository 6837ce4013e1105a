"""``aftercall projections|history|conversations|metrics``: the read side from a terminal.

- ``projections status``: each projection's checkpoint against the log, its lag, and the
  events it parked (could not apply, and went on without: ``projections.parking``).
- ``projections rebuild [NAME ...]``: rebuild from position 0 aside, then swap, while the
  service keeps serving (and following) the live tables.
- ``projections retry [NAME ...]``: apply the parked events again, in the order of the
  log, once their cause is fixed: those that apply are unparked, the others are listed
  with their error (exit status 1 while any is still parked).
- ``history PHONE``, ``conversations [--active]``, ``metrics``: readable tables, or JSON
  with ``--json``. They first project whatever the log holds that the read models do not
  (safe while the service runs: every page is claimed by exactly one writer), so they
  answer with the log as it is now even when no service is running.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import attrs

from aftercall.commands import CommandError, run_async
from aftercall.storage import open_read_models, open_store, store_location
from events.phones import InvalidPhone, identity_phone
from events.store import EventStore, EventStoreError
from projections import queries
from projections.parking import ParkedEvent
from projections.readmodels import ReadModels
from projections.runner import (
    ALL_PROJECTIONS,
    ProjectionRunner,
    ProjectionStatus,
    UnknownProjection,
    projection_status,
    rebuild,
    retry_parked,
    select,
)

#: A command's work; what it returns (if anything) is the exit status.
Command = Callable[[EventStore, ReadModels, argparse.Namespace], Awaitable[int | None]]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "projections", help="read models: status, rebuilds, parked events"
    )
    commands = parser.add_subparsers(dest="projections_command", metavar="ACTION")
    commands.required = True
    status = commands.add_parser("status", help="each projection's position, lag and parked events")
    _add_json(status)
    status.set_defaults(handler=lambda args: _run(_status, args))
    names = ", ".join(p.name for p in ALL_PROJECTIONS)
    again = commands.add_parser(
        "rebuild", help="rebuild from the start of the log aside, then swap it in"
    )
    again.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({names})")
    again.set_defaults(handler=lambda args: _run(_rebuild, args))
    retry = commands.add_parser(
        "retry", help="apply the events a projection parked again (once their cause is fixed)"
    )
    retry.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({names})")
    retry.set_defaults(handler=lambda args: _run(_retry, args))

    history = subparsers.add_parser("history", help="every WhatsApp message with one phone")
    history.add_argument("phone", help="E.164, e.g. +15551234567")
    history.add_argument("--limit", type=int, default=200, help="the last N messages (200)")
    _add_json(history)
    history.set_defaults(handler=lambda args: _run(_history, args, catch_up=True))

    listing = subparsers.add_parser("conversations", help="one line per phone and its state")
    listing.add_argument(
        "--active", action="store_true", help="only those still going on (active or waiting)"
    )
    listing.add_argument(
        "--state", action="append", default=[], help="only this state (repeatable)"
    )
    listing.add_argument(
        "--waiting",
        action="store_true",
        help="only those waiting for a person at the business (waiting_for_human)",
    )
    listing.add_argument("--limit", type=int, default=100, help="at most N (100)")
    _add_json(listing)
    listing.set_defaults(handler=lambda args: _run(_conversations, args, catch_up=True))

    numbers = subparsers.add_parser("metrics", help="latency, statuses, fallbacks, funnel")
    _add_json(numbers)
    numbers.set_defaults(handler=lambda args: _run(_metrics, args, catch_up=True))


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="JSON for machines")


def _run(command: Command, args: argparse.Namespace, *, catch_up: bool = False) -> int:
    location = store_location()
    status = 0

    async def main() -> None:
        nonlocal status
        async with (
            open_store(location.database_url, location.sqlite_path) as store,
            open_read_models(store) as models,
        ):
            if catch_up:
                await ProjectionRunner(store, models).catch_up()
            status = await command(store, models, args) or 0

    try:
        run_async(main)
    except (EventStoreError, UnknownProjection, ValueError) as exc:
        raise CommandError(f"{exc} (event log: {location.describe()})") from exc
    except BrokenPipeError:  # `aftercall history ... | head`
        sys.stderr.close()
    return status


async def _status(store: EventStore, models: ReadModels, args: argparse.Namespace) -> None:
    found = await projection_status(store, models)
    if args.json:
        print(json.dumps([_status_json(s) for s in found], indent=2, ensure_ascii=False))
        return
    rows = [
        {
            "projection": s.name,
            "state": s.state,
            "position": "-" if s.position is None else s.position,
            "head": s.head,
            "behind": s.behind,
            "lag": "-" if s.lag_seconds is None else f"{s.lag_seconds:.1f} s",
            "parked": len(s.parked),
            "rebuilding": "-" if s.rebuild_position is None else f"at {s.rebuild_position}",
            "updated": s.updated_at,
        }
        for s in found
    ]
    print(table(rows))
    parked = [event for s in found for event in s.parked]
    if parked:
        print(
            "\nparked events (could not be applied; each projection went on without them);"
            " after a fix, `aftercall projections retry` applies them again:"
        )
        print(table([_parked_row(event) for event in parked]))


def _status_json(status: ProjectionStatus) -> dict[str, Any]:
    fields = queries.jsonable(attrs.asdict(status, recurse=False))
    fields["parked"] = [queries.jsonable(attrs.asdict(e)) for e in status.parked]
    return fields


def _parked_row(event: ParkedEvent) -> dict[str, Any]:
    return {
        "projection": event.projection,
        "position": event.position,
        "type": event.type,
        "stream": event.stream,
        "event id": event.event_id,
        "tries": event.attempts,
        "parked": event.parked_at,
        "error": _short(event.error, 80),
    }


async def _retry(store: EventStore, models: ReadModels, args: argparse.Namespace) -> int:
    projections = select(args.names)
    outcomes = await retry_parked(store, models, projections)
    if not outcomes:
        print(f"nothing is parked in {', '.join(p.name for p in projections)}")
        return 0
    for outcome in outcomes:
        event = outcome.event
        what = f"{event.projection}: event {event.position} ({event.type} in {event.stream})"
        if outcome.result == "applied":
            print(f"{what} applies now: unparked")
        elif outcome.result == "gone":
            print(f"{what} was no longer parked (retried by another process)")
        else:
            print(f"{what} is still parked: {_short(event.error, 200)}")
    still = sum(1 for o in outcomes if o.result == "parked")
    print(f"{len(outcomes) - still} of {len(outcomes)} parked events unparked")
    if still:
        print(
            f"aftercall: {still} still parked; fix what the error says, then run"
            " `aftercall projections retry` again (`aftercall projections status` lists them)",
            file=sys.stderr,
        )
        return 1
    return 0


async def _rebuild(store: EventStore, models: ReadModels, args: argparse.Namespace) -> None:
    projections = select(args.names)
    await models.prepare(projections)
    head = await store.head()
    print(
        f"rebuilding {', '.join(p.name for p in projections)} from the start of the log"
        f" ({head} events); the live tables keep serving until the swap",
        file=sys.stderr,
    )

    def progress(events: int, position: int) -> None:
        print(f"  {events} events, position {position}", file=sys.stderr, flush=True)

    report = await rebuild(store, models, projections, on_page=progress)
    print(
        f"rebuilt {', '.join(report.projections)}: {report.events} events in"
        f" {report.seconds:.1f} s ({report.events_per_second:,.0f} events/s), swapped in at"
        f" position {report.position}"
    )
    if report.parked:
        print(
            f"{report.parked} events could not be applied and are parked:"
            " `aftercall projections status` lists them"
        )


async def _history(_store: EventStore, models: ReadModels, args: argparse.Namespace) -> None:
    phone = _phone(args.phone)
    rows = await queries.history(models, phone, limit=args.limit)
    if args.json:
        print(json.dumps([queries.jsonable(r) for r in rows], indent=2, ensure_ascii=False))
        return
    if not rows:
        print(f"no messages with {phone}", file=sys.stderr)
        return
    print(
        table(
            [
                {
                    "time": r["created_at"],
                    "dir": "in" if r["direction"] == "inbound" else "out",
                    "status": _status_text(r),
                    "kind": r["kind"] or "",
                    "text": _short(r["body"] or "", 70),
                    "call": r["call_conversation_id"] or "",
                }
                for r in rows
            ]
        )
    )


async def _conversations(_store: EventStore, models: ReadModels, args: argparse.Namespace) -> None:
    states = list(args.state) or (list(queries.ACTIVE_STATES) if args.active else [])
    if args.waiting:
        states += queries.WAITING_STATES
    rows = await queries.conversations(models, states=states, limit=args.limit)
    if args.json:
        print(json.dumps([queries.jsonable(r) for r in rows], indent=2, ensure_ascii=False))
        return
    if not rows:
        print("no conversations", file=sys.stderr)
        return
    print(
        table(
            [
                {
                    "phone": r["phone"],
                    "state": f"{r['state']} ({r['control_by']})"
                    if r["state"] in ("with_human", "waiting_for_human") and r["control_by"]
                    else r["state"],
                    "in": r["messages_in"],
                    "out": r["messages_out"],
                    "last inbound": r["last_inbound_at"],
                    "last outbound": r["last_outbound_at"],
                    "window ends": r["window_ends_at"],
                    "last error": _short(r["last_error"] or "", 50),
                }
                for r in rows
            ]
        )
    )


async def _metrics(_store: EventStore, models: ReadModels, args: argparse.Namespace) -> None:
    found = await queries.metrics(models)
    if args.json:
        print(json.dumps(found, indent=2))
        return
    sections = []
    latency_rows = []
    for label, key in (
        ("agent", "agent_latency_seconds"),
        ("aftercall added", "added_latency_seconds"),
    ):
        overall = found[key]["overall"]
        latency_rows.append({"latency (s)": label, "hour": "overall", **overall})
        for hour in found[key]["by_hour"][-24:]:
            latency_rows.append({"latency (s)": label, **hour})
    sections.append(table(latency_rows))
    statuses = [
        {"direction": d, "status": s, "messages": n}
        for d, by in found["messages_by_status"].items()
        for s, n in by.items()
    ]
    sections.append(table(statuses) if statuses else "no messages")
    sections.append(
        table([{"fallback reason": r, "count": n} for r, n in found["fallbacks_by_reason"].items()])
        if found["fallbacks_by_reason"]
        else "no fallbacks"
    )
    sessions = found["agent_sessions"]
    sections.append(f"agent sessions opened {sessions['opened']}, reopened {sessions['reopened']}")
    sections.append(
        table([{"twilio error": c, "messages": n} for c, n in found["twilio_errors"].items()])
        if found["twilio_errors"]
        else "no Twilio errors"
    )
    funnel = found["funnel"]
    sections.append(
        table(
            [
                {
                    "funnel": step,
                    "calls": funnel[key],
                    "of calls": _share(funnel[key], funnel["calls"]),
                }
                for step, key in (
                    ("calls completed", "calls"),
                    ("first message sent", "first_message"),
                    ("person replied", "user_replied"),
                    ("conversation continued", "continued"),
                )
            ]
        )
    )
    print("\n\n".join(sections))


# -- formatting ---------------------------------------------------------------------------
def table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as aligned columns with a header, for a terminal."""
    if not rows:
        return ""
    headers = list(rows[0])
    cells = [[_cell(row.get(h)) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _status_text(row: dict[str, Any]) -> str:
    status = str(row["status"] or "-")
    return f"{status} ({row['error_code']})" if row["error_code"] is not None else status


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _phone(raw: str) -> str:
    try:
        return identity_phone(raw)
    except InvalidPhone as exc:
        raise CommandError(str(exc)) from exc
