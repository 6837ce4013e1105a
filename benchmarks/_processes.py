"""What the benchmarks read about processes: CPU time from /proc, a served app's readiness,
the command that serves an app the way production does. Shared by the conversation
benchmark and its webhook baseline, so both count CPU and start Hypercorn alike."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import trio


def hypercorn_command(app: str, port: int) -> list[str]:
    """``hypercorn -k trio`` on 127.0.0.1:``port`` in this process's Python (``-w 0``: the
    app runs in the process started, so its pid is the one whose CPU is read)."""
    return [sys.executable, "-m", "hypercorn", "-k", "trio", "-w", "0",
            "--bind", f"127.0.0.1:{port}", app]  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (Linux /proc)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat").read_text(), children=True)


def served_pid(pid: int) -> int:
    """The process that serves: ``pid`` itself, or its only child when ``pid`` is a
    profiler that started the server (py-spy record -- ...). A running child's CPU is not
    in its parent's until the parent reaps it, so it must be read from the child."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if len(children) == 1 else pid


def postgres_cpu_seconds() -> float:
    """CPU of every PostgreSQL process on the machine so far (its backends included)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        if "(postgres)" in text:
            total += cpu_seconds_of(text)
    return total


def cpu_seconds_of(stat: str, *, children: bool = False) -> float:
    fields = stat.rsplit(")", 1)[1].split()  # utime stime cutime cstime from field 11
    ticks = sum(int(value) for value in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_times() -> list[int]:
    """The machine's CPU time so far by kind (user, nice, system, idle, ...), in ticks."""
    with open("/proc/stat") as stat:
        return [int(value) for value in stat.readline().split()[1:]]


async def wait_until_answering(url: str, ready: Callable[[int], bool] = lambda _: True) -> None:
    """Until ``url`` answers with a status ``ready`` accepts (any, by default)."""
    async with httpx.AsyncClient() as http:
        with trio.fail_after(60):
            while True:
                try:
                    if ready((await http.get(url)).status_code):
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)  # a process we started: nothing else can tell us
