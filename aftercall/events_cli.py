"""``aftercall events ...``: read the log to see and replay what happened.

- ``tail``: follow new events as they commit (LISTEN/NOTIFY on PostgreSQL).
- ``show STREAM``: one stream, oldest first.
- ``replay [--stream S] [--category C] [--from POS] [--until POS]``: everything in the safe
  global order, the order projections and actors saw it.

Human-readable by default, one JSON object per line with ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from aftercall.commands import CommandError, run_async
from aftercall.storage import open_store, store_location
from events.store import EventStore, EventStoreError, RecordedEvent, tail, validate_stream_name


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("events", help="read, follow and replay the event log")
    commands = parser.add_subparsers(dest="events_command", metavar="ACTION")
    commands.required = True

    show = commands.add_parser("show", help="print one stream, oldest first")
    show.add_argument("stream", help="stream name, e.g. phone-+15551234567")
    _add_json(show)
    show.set_defaults(handler=lambda args: _run(_show, args))

    follow = commands.add_parser("tail", help="print new events as they are recorded")
    follow.add_argument("--category", help="only streams of this category, e.g. phone")
    follow.add_argument(
        "--from", dest="start", type=int, default=None, help="start after this position"
    )
    _add_json(follow)
    follow.set_defaults(handler=lambda args: _run(_tail, args))

    replay = commands.add_parser("replay", help="print the log in its global order")
    replay.add_argument("--stream", help="only this stream")
    replay.add_argument("--category", help="only streams of this category")
    replay.add_argument("--from", dest="start", type=int, default=0, help="after this position")
    replay.add_argument("--until", type=int, default=None, help="up to this position")
    _add_json(replay)
    replay.set_defaults(handler=lambda args: _run(_replay, args))


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def _run(command: Callable[[EventStore, argparse.Namespace], Awaitable[None]], args: Any) -> int:
    location = store_location()

    async def main() -> None:
        async with open_store(location.database_url, location.sqlite_path) as store:
            await command(store, args)

    try:
        run_async(main)
    except EventStoreError as exc:
        raise CommandError(f"{exc} (event log: {location.describe()})") from exc
    except BrokenPipeError:  # `aftercall events replay | head`
        sys.stderr.close()
    return 0


async def _show(store: EventStore, args: argparse.Namespace) -> None:
    try:
        validate_stream_name(args.stream)
    except EventStoreError as exc:
        raise CommandError(str(exc)) from exc
    events = await store.read_stream(args.stream)
    if not events and not args.json:
        print(f"stream {args.stream} has no events", file=sys.stderr)
    for event in events:
        print_event(event, args.json)


async def _tail(store: EventStore, args: argparse.Namespace) -> None:
    start = await store.head() if args.start is None else args.start
    async for event in tail(store, after=start, category=args.category):
        print_event(event, args.json, flush=True)


async def _replay(store: EventStore, args: argparse.Namespace) -> None:
    if args.stream:
        try:
            validate_stream_name(args.stream)
        except EventStoreError as exc:
            raise CommandError(str(exc)) from exc
    position = args.start
    until = args.until if args.until is not None else await store.head()
    while position < until:
        batch = await store.read_all(after=position, limit=1000, category=args.category)
        if not batch:
            break
        for event in batch:
            if event.position > until:
                return
            if args.stream is None or event.stream == args.stream:
                print_event(event, args.json)
        position = batch[-1].position


def event_json(event: RecordedEvent) -> dict[str, Any]:
    return {
        "position": event.position,
        "stream": event.stream,
        "version": event.version,
        "type": event.type,
        "data": event.data,
        "metadata": event.metadata,
        "event_id": str(event.event_id),
        "recorded_at": event.recorded_at.isoformat(),
    }


def format_event(event: RecordedEvent) -> str:
    """One line a person can scan: position, time, stream@version, type, then the data."""
    data = json.dumps(event.data, ensure_ascii=False, separators=(", ", ": "))
    when = event.recorded_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"#{event.position:<7} {when}  {event.stream}@{event.version}  {event.type}  {data}"


def print_event(
    event: RecordedEvent, as_json: bool, *, flush: bool = False, out: TextIO | None = None
) -> None:
    line = json.dumps(event_json(event), ensure_ascii=False) if as_json else format_event(event)
    print(line, file=out or sys.stdout, flush=flush)
