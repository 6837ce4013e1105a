"""``aftercall operators``: run as a person runs it (a real process, the embedded store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from events.operators import operator_stream
from events.sqlite import open_sqlite_store

PASSWORD = "a password for the cli"


def operators(
    data_dir: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AFTERCALL_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "aftercall", "operators", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=60,
        check=False,
    )


async def _run(
    data_dir: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(partial(operators, data_dir, *args, stdin=stdin))


async def test_add_list_change_and_remove(tmp_path: Path) -> None:
    added = await _run(tmp_path, "add", "ana", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "operator ana added" in added.stdout
    again = await _run(tmp_path, "add", "ana", "--password-stdin", stdin=PASSWORD + "\n")
    assert again.returncode == 2
    assert "already an operator named 'ana'" in again.stderr

    listed = await _run(tmp_path, "list")
    assert listed.stdout.startswith("ana  added ")

    changed = await _run(
        tmp_path, "password", "ana", "--password-stdin", stdin="another one here\r\n"
    )
    assert changed.returncode == 0, changed.stderr
    removed = await _run(tmp_path, "remove", "ana")
    assert removed.returncode == 0, removed.stderr
    assert (await _run(tmp_path, "list")).stdout == ""
    missing = await _run(tmp_path, "remove", "ana")
    assert missing.returncode == 2
    assert "no operator named 'ana'" in missing.stderr

    everything = ""
    for result in (added, again, listed, changed, removed, missing):
        everything += result.stdout + result.stderr
    assert PASSWORD not in everything
    assert "another one here" not in everything
    async with open_sqlite_store(tmp_path / "events.sqlite3") as store:
        events = await store.read_stream(operator_stream("ana"))
        log = json.dumps([e.data for e in events])
    assert [e.type for e in events] == [
        "OperatorAdded",
        "OperatorPasswordChanged",
        "OperatorRemoved",
    ]
    assert PASSWORD not in log
    assert "argon2" not in log


async def test_bad_names_and_passwords_are_refused_with_a_reason(tmp_path: Path) -> None:
    cases = [
        (("add", "Ana Smith", "--password-stdin"), PASSWORD, "lower-case letters"),
        (("add", "ana", "--password-stdin"), "short\n", "at least 10 characters"),
        (("add", "ana", "--password-stdin"), "", "at least 10 characters"),
        (("add", "ana"), PASSWORD, "use --password-stdin"),  # no terminal to ask on
        (("password", "nobody", "--password-stdin"), PASSWORD, "no operator named"),
    ]
    for args, stdin, reason in cases:
        result = await _run(tmp_path, *args, stdin=stdin)
        assert result.returncode == 2, args
        assert reason in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert (await _run(tmp_path, "list")).stdout == ""
