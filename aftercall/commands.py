"""What every ``aftercall`` subcommand shares: the error a user can fix, and running Trio.

Errors that a user can fix are printed as one line naming the problem, with exit status 2;
no traceback reaches the user (``aftercall.cli.main`` does the printing).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

import trio

from actors.groups import lone_leaf


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
