"""``aftercall optouts`` and ``aftercall conversations --waiting`` on a log on disk."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from aftercall.cli import main
from events.calls import CallCompleted
from events.codec import to_new_event
from events.conversation import (
    HumanRequested,
    MessageReceived,
    OptedOut,
    RecipientUnreachable,
    phone_stream,
)
from events.sqlite import open_sqlite_store

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ANA, BOB, CARL = "+15551230001", "+15551230002", "+15551230003"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("AFTERCALL_DATA_DIR", str(tmp_path))

    async def seed() -> None:
        async with open_sqlite_store(tmp_path / "events.sqlite3") as store:
            for phone, *events in (
                (ANA, MessageReceived("SM1", ANA, "¡Baja!", T0), OptedOut("SM1", "baja", T0)),
                (BOB, RecipientUnreachable(63024, "invalid message recipient", T0, "SM2")),
                (CARL, HumanRequested("agent", "wants a person", T0, turn_id="t1")),
            ):
                call = CallCompleted(f"conv_{phone[-1]}", "agent_1", phone, "A call.")
                await store.append(phone_stream(phone), [to_new_event(e) for e in (call, *events)])

    trio.run(seed)
    return tmp_path


def test_optouts_lists_who_nothing_is_sent_to(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["optouts", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["phone"], r["state"], r["keyword"], r["error_code"]) for r in rows} == {
        (ANA, "opted_out", "baja", None),
        (BOB, "unreachable", None, 63024),
    }
    assert main(["optouts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["phone", "state", "since", "why"]
    assert any(line.startswith(ANA) and "wrote BAJA" in line for line in lines)
    assert any("Twilio 63024: invalid message recipient" in line for line in lines)


def test_conversations_waiting_for_a_person(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["conversations", "--waiting", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["phone"], row["state"], row["control_by"]) == (CARL, "waiting_for_human", "agent")
    assert main(["conversations"]) == 0
    out = capsys.readouterr().out
    assert "waiting_for_human (agent)" in out
    assert "opted_out" in out
    assert "unreachable" in out
