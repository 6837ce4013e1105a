"""``aftercall projections|history|conversations|metrics`` on the embedded store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from aftercall.cli import main
from events.sqlite import open_sqlite_store
from projections.runner import ALL_PROJECTIONS
from tests.projections.workload import append_all, interleaved, phone_number


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("AFTERCALL_DATA_DIR", str(tmp_path))

    async def seed() -> None:
        async with open_sqlite_store(tmp_path / "events.sqlite3") as store:
            await append_all(store, list(interleaved(4, 12)))

    trio.run(seed)
    return tmp_path


def test_history_conversations_and_metrics_catch_up_then_answer(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", phone_number(1), "--json"]) == 0
    messages = json.loads(capsys.readouterr().out)
    assert messages
    assert {m["direction"] for m in messages} <= {"inbound", "outbound"}

    assert main(["history", phone_number(1)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["time", "dir", "status", "kind", "text", "call"]

    assert main(["conversations", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 12
    assert main(["conversations", "--state", "failed"]) == 0
    capsys.readouterr()

    assert main(["metrics", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["funnel"]["calls"] >= 1
    assert main(["metrics"]) == 0
    assert "funnel" in capsys.readouterr().out

    assert main(["projections", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {s["name"]: s["state"] for s in status} == {p.name: "live" for p in ALL_PROJECTIONS}


def test_rebuild_and_status(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["projections", "rebuild", "metrics"]) == 0
    captured = capsys.readouterr()
    assert "rebuilt metrics:" in captured.out
    assert main(["projections", "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["projection", "state", "position"]
    states = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert states["metrics"] == "live"
    assert states["history"] == "not"  # "not built": rebuilt was metrics alone


def test_bad_input_is_one_line(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "0612345678"]) == 2
    assert "no country code" in capsys.readouterr().err
    assert main(["projections", "rebuild", "nope"]) == 2
    assert "no projection named nope" in capsys.readouterr().err
    assert main(["conversations", "--state", "sleepy"]) == 2
    assert "unknown state sleepy" in capsys.readouterr().err
