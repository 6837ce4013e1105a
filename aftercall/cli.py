"""The ``aftercall`` command: one entry point, one subcommand per area.

Each area registers its own subcommands (``events.cli``, ``sandbox.cli``, ...) so a newcomer
finds a command next to the code it drives. Errors that a user can fix are printed as one
line naming the problem, with exit status 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from importlib import import_module

import trio

#: Modules that contribute subcommands; each has ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "aftercall.serve",
    "aftercall.calls_cli",
    "events.cli",
    "projections.cli",
    "sandbox.cli",
)


class CommandError(Exception):
    """A problem the user can fix; printed as ``aftercall: <message>``, exit status 2."""


Handler = Callable[[argparse.Namespace], int]


def run_async(fn: Callable[[], Awaitable[None]]) -> None:
    """``trio.run`` for commands: a lone error inside nurseries comes out as itself.

    Trio wraps errors raised inside nurseries in exception groups; a user should see
    "aftercall: <problem>", so a group holding one error is unwrapped to that error.
    """
    try:
        trio.run(fn)
    except BaseExceptionGroup as group:
        leaf = lone_leaf(group)
        if leaf is None:
            raise
        raise leaf from None


def lone_leaf(error: BaseException) -> BaseException | None:
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aftercall",
        description="Continue ElevenLabs agent phone calls on WhatsApp through Twilio.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # an area that is not built yet contributes nothing
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
