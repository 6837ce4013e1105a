"""``aftercall events``: the replay tools, run as a user runs them (a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from events.sqlite import open_sqlite_store
from events.store import NewEvent


def run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AFTERCALL_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "aftercall", "events", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def seed(data_dir: Path) -> None:
    async with open_sqlite_store(data_dir / "events.sqlite3") as store:
        await store.append("phone-+15550001", [NewEvent("MessageReceived", {"body": "hi"})])
        await store.append("call-conv_1", [NewEvent("CallCompleted", {"summary": "s"})])
        await store.append("phone-+15550001", [NewEvent("ReplySent", {"sid": "SM1"})])


async def test_show_prints_one_stream_in_order(tmp_path: Path) -> None:
    await seed(tmp_path)
    result = await trio.to_thread.run_sync(run_cli, tmp_path, "show", "phone-+15550001")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "phone-+15550001@1  MessageReceived" in lines[0]
    assert "ReplySent" in lines[1]

    as_json = await trio.to_thread.run_sync(run_cli, tmp_path, "show", "phone-+15550001", "--json")
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["type"] for r in rows] == ["MessageReceived", "ReplySent"]
    assert rows[0]["data"] == {"body": "hi"}


async def test_replay_filters_and_ranges(tmp_path: Path) -> None:
    await seed(tmp_path)
    everything = await trio.to_thread.run_sync(run_cli, tmp_path, "replay", "--json")
    positions = [json.loads(line)["position"] for line in everything.stdout.splitlines()]
    assert len(positions) == 3
    assert positions == sorted(positions)
    middle = await trio.to_thread.run_sync(
        run_cli, tmp_path, "replay", "--from", str(positions[0]), "--until", str(positions[1])
    )
    assert len(middle.stdout.splitlines()) == 1
    assert "CallCompleted" in middle.stdout
    calls = await trio.to_thread.run_sync(run_cli, tmp_path, "replay", "--category", "call")
    assert len(calls.stdout.splitlines()) == 1
    one = await trio.to_thread.run_sync(run_cli, tmp_path, "replay", "--stream", "phone-+15550001")
    assert len(one.stdout.splitlines()) == 2


async def test_bad_stream_name_is_one_clear_line(tmp_path: Path) -> None:
    result = await trio.to_thread.run_sync(run_cli, tmp_path, "show", "no dash here")
    assert result.returncode == 2
    assert result.stderr.startswith("aftercall: stream name")
    assert "Traceback" not in result.stderr


async def test_unknown_database_scheme_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": "mysql://root:hunter2@localhost/x"}
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "aftercall", "events", "replay"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    )
    assert result.returncode == 2
    assert "postgresql://" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


async def test_tail_follows_new_events(tmp_path: Path) -> None:
    await seed(tmp_path)
    env = {**os.environ, "AFTERCALL_DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    command = [sys.executable, "-m", "aftercall", "events", "tail", "--json", "--from", "0"]
    lines: list[dict[str, object]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial(trio.run_process, command, stdout=subprocess.PIPE, env=env, check=False)
            )
            assert process.stdout is not None
            buffer = b""
            async with open_sqlite_store(tmp_path / "events.sqlite3") as store:
                while len(lines) < 4:
                    chunk = await process.stdout.receive_some()
                    assert chunk, "tail ended early"
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    lines += [json.loads(c) for c in complete if c]
                    if len(lines) == 3:  # history printed: now a live event
                        await store.append("phone-+15550002", [NewEvent("Live", {"n": 1})])
            process.terminate()
    assert [line["type"] for line in lines] == [
        "MessageReceived",
        "CallCompleted",
        "ReplySent",
        "Live",
    ]
