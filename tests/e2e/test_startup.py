"""Starting aftercall the wrong way, or without what it needs: one line saying what to fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from sandbox.environment import free_port

ROOT = Path(__file__).parents[2]
REQUIRED = ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_WHATSAPP_FROM",
            "DEFAULT_AGENT_ID", "PUBLIC_BASE_URL"]  # fmt: skip


def _hypercorn(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "hypercorn", *args, "--bind", f"127.0.0.1:{free_port()}",
               "web.app:app"]  # fmt: skip
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED and k != "DATABASE_URL"}
    env["AFTERCALL_DATA_DIR"] = str(tmp_path)
    return env


async def test_plain_hypercorn_names_the_right_command(tmp_path: Path) -> None:
    env = {**_clean_env(tmp_path), "AFTERCALL_SANDBOX": "1"}
    result = await trio.to_thread.run_sync(_hypercorn, [], env)
    assert "run: hypercorn -k trio web.app:app" in result.stderr
    assert "Traceback" not in result.stderr


async def test_missing_settings_are_all_named_at_once(tmp_path: Path) -> None:
    result = await trio.to_thread.run_sync(_hypercorn, ["-k", "trio"], _clean_env(tmp_path))
    line = [x for x in result.stderr.splitlines() if x.startswith("aftercall:")]
    assert len(line) == 1
    assert line[0].startswith("aftercall: cannot start: missing ")
    for name in REQUIRED:
        assert name in line[0]
    assert "Traceback" not in result.stderr


async def test_database_down_is_one_line_without_the_password(tmp_path: Path) -> None:
    env = {
        **_clean_env(tmp_path),
        "AFTERCALL_SANDBOX": "1",
        "DATABASE_URL": f"postgresql://aftercall:s3cretpw@127.0.0.1:{free_port()}/nothing",
    }
    result = await trio.to_thread.run_sync(_hypercorn, ["-k", "trio"], env)
    assert "aftercall: cannot connect to PostgreSQL" in result.stderr
    assert "s3cretpw" not in result.stderr
    assert "Traceback" not in result.stderr
