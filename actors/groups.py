"""Errors out of nurseries, unwrapped for people.

Trio wraps an error raised inside a nursery in an exception group, once per nursery it
crosses. A person should read "aftercall: <problem>", not a tree: when a group holds
exactly one error, that error is the reason.
"""

from __future__ import annotations


def lone_leaf(error: BaseException) -> BaseException | None:
    """The one error inside nested single-error groups; None when a group holds several."""
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error
