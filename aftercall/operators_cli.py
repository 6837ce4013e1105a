"""``aftercall operators add|password|list|remove``: who may use the console.

Passwords are asked for twice on the terminal (never echoed), or read from the first line
of standard input with ``--password-stdin`` (for scripts: ``printf '%s\\n' "$PW" |
aftercall operators add ana --password-stdin``). They are never accepted as an argument,
where ``ps`` and shell histories would keep them. Only an argon2id hash is stored, beside
the log (``aftercall.operator_store``); the operator's stream (``operator-NAME``) records
that the account was added, changed or removed, and each sign-in.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aftercall.commands import CommandError, run_async
from aftercall.operator_store import open_operator_store
from aftercall.storage import open_store, store_location
from events.operators import InvalidOperatorName, validate_operator_name
from events.store import EventStoreError
from web.console.accounts import AccountError, OperatorAccounts, check_password, describe


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("operators", help="console accounts: add, list, remove")
    commands = parser.add_subparsers(dest="operators_command", metavar="ACTION")
    commands.required = True

    add = commands.add_parser("add", help="add an operator (asks for the password twice)")
    add.add_argument("name", help="lower-case letters, digits, '.', '_' or '-'")
    _password_stdin(add)
    add.set_defaults(handler=lambda args: _run(_add, args))

    password = commands.add_parser(
        "password", help="give an operator a new password (ends their sessions)"
    )
    password.add_argument("name")
    _password_stdin(password)
    password.set_defaults(handler=lambda args: _run(_password, args))

    listing = commands.add_parser("list", help="every operator, and any lock")
    listing.set_defaults(handler=lambda args: _run(_list, args))

    remove = commands.add_parser("remove", help="remove an operator (ends their sessions)")
    remove.add_argument("name")
    remove.set_defaults(handler=lambda args: _run(_remove, args))


def _password_stdin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )


def read_password(from_stdin: bool) -> str:
    """The new password: stdin's first line, or asked twice on the terminal."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        if not sys.stdin.isatty():
            raise CommandError("no terminal to ask for the password on: use --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the two passwords differ; nothing was changed")
    try:
        return check_password(password)
    except AccountError as exc:
        raise CommandError(str(exc)) from None


def _name(raw: str) -> str:
    try:
        return validate_operator_name(raw)
    except InvalidOperatorName as exc:
        raise CommandError(str(exc)) from None


Action = Callable[[OperatorAccounts, argparse.Namespace], Awaitable[None]]


def _run(action: Action, args: argparse.Namespace) -> int:
    location = store_location()

    async def main() -> None:
        async with (
            open_store(location.database_url, location.sqlite_path) as store,
            open_operator_store(store) as credentials,
        ):
            await action(OperatorAccounts(store, credentials), args)

    try:
        run_async(main)
    except AccountError as exc:
        raise CommandError(str(exc)) from exc
    except EventStoreError as exc:
        raise CommandError(f"{exc} (event log: {location.describe()})") from exc
    return 0


async def _add(accounts: OperatorAccounts, args: argparse.Namespace) -> None:
    name = _name(args.name)
    if await accounts.exists(name):  # before asking for a password that would be wasted
        raise CommandError(f"there is already an operator named {name!r}")
    await accounts.add(name, read_password(args.password_stdin), by="cli")
    print(f"operator {name} added; sign in at PUBLIC_BASE_URL/console")


async def _password(accounts: OperatorAccounts, args: argparse.Namespace) -> None:
    name = _name(args.name)
    if not await accounts.exists(name):
        raise CommandError(f"there is no operator named {name!r}")
    await accounts.set_password(name, read_password(args.password_stdin), by="cli")
    print(f"operator {name} has a new password; their sessions were ended")


async def _list(accounts: OperatorAccounts, _args: argparse.Namespace) -> None:
    operators = await accounts.list()
    if not operators:
        print("no operators yet: aftercall operators add NAME", file=sys.stderr)
    for line in describe(operators, datetime.now(UTC)):
        print(line)


async def _remove(accounts: OperatorAccounts, args: argparse.Namespace) -> None:
    name = _name(args.name)
    await accounts.remove(name, by="cli")
    print(f"operator {name} removed; their sessions were ended")
