"""Find or start the PostgreSQL server the tests use.

In order: ``DATABASE_URL`` if set; the machine's server on 127.0.0.1:5432 (database
``test``) if it answers; otherwise a throwaway cluster started from the installed binaries
for this run (as the ``postgres`` user, since ``pg_ctl`` refuses root), removed at the end.
If none of that is possible the run stops with one line saying how to get PostgreSQL:
PostgreSQL tests are never silently skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import attrs

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"
HOW_TO_GET_POSTGRES = (
    "PostgreSQL is needed for the tests: set DATABASE_URL, or start the local server "
    "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start), "
    "or install it (apt-get install -y postgresql)"
)


class NoPostgres(RuntimeError):
    pass


@attrs.define
class PostgresServer:
    dsn: str
    data_dir: Path | None = None
    pg_ctl: str | None = None

    def stop(self) -> None:
        if self.data_dir is None or self.pg_ctl is None:
            return
        _as_postgres([self.pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _as_postgres(cmd: list[str]) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(prefix + cmd, check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_or_start() -> PostgresServer:
    url = os.environ.get("DATABASE_URL")
    if url:
        return PostgresServer(url)
    if _answers("127.0.0.1", 5432):
        return PostgresServer(LOCAL_DSN)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [
        p for p in [shutil.which("pg_ctl")] if p
    ]
    if not candidates:
        raise NoPostgres(HOW_TO_GET_POSTGRES)
    pg_ctl = candidates[-1]
    initdb = str(Path(pg_ctl).with_name("initdb"))
    root = Path(tempfile.mkdtemp(prefix="aftercall-pg-"))
    data = root / "data"
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    try:
        _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"])
        _as_postgres(
            [
                pg_ctl,
                "-D",
                str(data),
                "-w",
                "-l",
                str(root / "log"),
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on",
                "start",
            ]
        )
        _as_postgres(
            [
                str(Path(pg_ctl).with_name("createdb")),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "test",
            ]
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise NoPostgres(
            f"could not start a throwaway PostgreSQL ({exc}); {HOW_TO_GET_POSTGRES}"
        ) from exc
    return PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/test", data, pg_ctl)


def psql(dsn: str, sql: str) -> str:
    """Run SQL with the psql client (used for set-up and clean-up outside Trio)."""
    result = subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout


#: Test schemas carry the pid of the run that made them, so a run only ever sweeps the
#: schemas of runs that are gone, never those of another run going on at the same time.
SCHEMA_PREFIX = "aftercall_test_"


def new_schema_name(prefix: str = SCHEMA_PREFIX) -> str:
    return f"{prefix}{os.getpid()}_{uuid.uuid4().hex[:10]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_schemas(dsn: str, prefix: str = SCHEMA_PREFIX) -> None:
    """Drop the test schemas left by interrupted runs (their pid is no longer alive)."""
    names = psql(
        dsn, f"SELECT nspname FROM pg_namespace WHERE starts_with(nspname, '{prefix}')"
    ).split()
    for name in names:
        pid = name.removeprefix(prefix).split("_", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            psql(dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
