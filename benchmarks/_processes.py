"""What the benchmarks read about processes: CPU time from /proc, a served app's readiness,
the command that serves an app the way production does, and a throwaway PostgreSQL cluster.
Shared by the conversation benchmark and its webhook baseline, so both count CPU and start
Hypercorn alike, and by the outage benchmark, which stops and starts its own cluster."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import attrs
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


@attrs.define
class ThrowawayPostgres:
    """A PostgreSQL cluster of this process's own, on a free port, from the installed
    binaries: a benchmark that stops and starts its database must never touch the
    machine's shared server (other people's tests use it)."""

    root: Path
    port: int
    pg_ctl: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the cluster and return once it accepts connections (``pg_ctl -w``)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        _as_postgres([self.pg_ctl, "-D", str(self.data), "-w", "-l", str(self.log),
                      "-o", options, "start"])  # fmt: skip

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: open connections are ended (rolling back what they had
        in hand), as in a failover or a restart by the operator."""
        _as_postgres([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its DSN."""
        createdb = str(Path(self.pg_ctl).with_name("createdb"))
        _as_postgres([createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name])
        return self.dsn(name)


@contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """initdb a new cluster in a temporary directory, start it, and remove it at the end
    (stopped first, whatever state the block left it in)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key) or [
        path for path in [shutil.which("pg_ctl")] if path
    ]
    if not candidates:
        raise RuntimeError("no PostgreSQL binaries (pg_ctl) found: apt-get install postgresql")
    pg_ctl = candidates[-1]
    root = Path(tempfile.mkdtemp(prefix="aftercall-bench-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:  # pg_ctl refuses root; the postgres user owns the cluster
        shutil.chown(root, "postgres", "postgres")
    cluster = ThrowawayPostgres(root, _free_port(), pg_ctl)
    try:
        initdb = str(Path(pg_ctl).with_name("initdb"))
        _as_postgres([initdb, "-D", str(cluster.data), "-A", "trust", "-U", "postgres"])
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            with suppress(subprocess.SubprocessError, OSError):
                cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _as_postgres(command: list[str]) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(prefix + command, check=True, capture_output=True, timeout=120)


def _version_key(path: str) -> tuple[int, ...]:
    """/usr/lib/postgresql/16/bin/pg_ctl sorts after .../9.6/...: by number, not by text."""
    version = Path(path).parents[1].name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
