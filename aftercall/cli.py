"""The ``aftercall`` command: one entry point, one subcommand per area.

Each area's subcommands are in a module of their own beside this one (``serve``,
``calls_cli``, ``events_cli``, ``projections_cli``, ``optouts_cli``, ``operators_cli``,
``sandbox_cli``), each with ``register(subparsers)``; a newcomer finds a command by its
area's name. Errors that a user can fix are printed as one line naming the problem, with
exit status 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aftercall import (
    calls_cli,
    events_cli,
    operators_cli,
    optouts_cli,
    projections_cli,
    sandbox_cli,
    serve,
)
from aftercall.commands import CommandError, Handler

#: The areas, in the order ``aftercall --help`` lists their commands.
COMMAND_MODULES = (
    serve,
    calls_cli,
    events_cli,
    projections_cli,
    optouts_cli,
    operators_cli,
    sandbox_cli,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aftercall",
        description="Continue ElevenLabs agent phone calls on WhatsApp through Twilio.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        print(f"aftercall: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
