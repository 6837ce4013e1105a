"""``aftercall optouts``: the phones nothing is sent to, for a person or for an export.

One line per phone that opted out (with the keyword it sent) or that Twilio says cannot or
will not receive (with the error code); ``--all`` adds those who opted back in or wrote
again since; ``--json`` prints the rows for another system's suppression list. Like the
other read-side commands it first projects what the log holds that the read models do not,
so it answers with the log as it is now, service running or not.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aftercall.commands import CommandError, run_async
from aftercall.storage import open_read_models, open_store, store_location
from events.store import EventStoreError
from projections import queries
from projections.runner import ProjectionRunner


def register(subparsers: Any) -> None:
    optouts = subparsers.add_parser(
        "optouts", help="phones nothing is sent to: opted out, or unreachable (--json)"
    )
    optouts.add_argument(
        "--all", action="store_true", help="also those who opted back in or wrote again"
    )
    optouts.add_argument("--limit", type=int, default=1000, help="at most N (1000)")
    optouts.add_argument("--json", action="store_true", help="JSON for machines")
    optouts.set_defaults(handler=_optouts)


def _optouts(args: argparse.Namespace) -> int:
    location = store_location()
    rows: list[dict[str, Any]] = []

    async def main() -> None:
        async with (
            open_store(location.database_url, location.sqlite_path) as store,
            open_read_models(store) as models,
        ):
            await ProjectionRunner(store, models).catch_up()
            rows.extend(await queries.optouts(models, everyone=args.all, limit=args.limit))

    try:
        run_async(main)
    except (EventStoreError, ValueError) as exc:
        raise CommandError(f"{exc} (event log: {location.describe()})") from exc
    try:
        print(render(rows, as_json=args.json))
    except BrokenPipeError:  # `aftercall optouts | head`
        sys.stderr.close()
    return 0


def render(rows: list[dict[str, Any]], *, as_json: bool) -> str:
    if as_json:
        return json.dumps([queries.jsonable(row) for row in rows], indent=2, ensure_ascii=False)
    if not rows:
        return "nobody has opted out"
    lines = [f"{'phone':<18}  {'state':<12}  {'since':<19}  why"]
    for row in rows:
        since = row["since"].strftime("%Y-%m-%d %H:%M:%S") if row["since"] else "-"
        why = row["reason"] or "-"
        if row["error_code"] is not None:
            why = f"Twilio {row['error_code']}: {why}"
        lines.append(f"{row['phone']:<18}  {row['state']:<12}  {since:<19}  {why}")
    return "\n".join(lines)
