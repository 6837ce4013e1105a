"""Parked events seen from outside: ``aftercall projections status|retry`` and ``/readyz``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from aftercall.cli import main
from aftercall.storage import open_read_models
from events.conversation import delivery_stream
from events.sqlite import open_sqlite_store
from events.store import EventStore
from projections.history import HISTORY
from projections.model import Recorded, RowSet, Rule
from projections.runner import ProjectionRunner
from tests.e2e.harness import running_aftercall
from tests.projections.test_parking import status, unreadable_time
from tests.projections.workload import append_all, interleaved, phone_number

PHONE = phone_number(3)
ANA = "+15551230001"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite log whose history has parked two events: one it can never read (its time
    does not parse), and one a bug in its rule refused (the bug is gone once seeded)."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("AFTERCALL_DATA_DIR", str(tmp_path))
    sound = HISTORY.rules["DeliveryStatusChanged"]

    def buggy(rows: RowSet, phone: str, record: Recorded) -> None:
        if record.data["message_sid"] == "SMfixable":
            raise KeyError("error_message")
        sound.apply(rows, phone, record)

    async def seed() -> None:
        async with open_sqlite_store(tmp_path / "events.sqlite3") as store:
            await append_all(store, list(interleaved(4, 12)))
            await store.append(delivery_stream(PHONE), [unreadable_time("SMtime")])
            await store.append(delivery_stream(PHONE), [status("SMfixable", "read")])
            async with open_read_models(store) as models:
                with monkeypatch.context() as patch:
                    patch.setitem(HISTORY.rules, "DeliveryStatusChanged", Rule(buggy, sound.wants))
                    await ProjectionRunner(store, models).catch_up()

    # The backoff between tries passes on the mock clock (SQLite: no socket to wait on).
    trio.run(seed, clock=trio.testing.MockClock(autojump_threshold=0))
    return tmp_path


def test_status_lists_parked_events_and_retry_applies_those_that_apply_now(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["projections", "status"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = lines[0].split()
    parked_column = header.index("parked")
    counts = {line.split()[0]: line.split()[parked_column] for line in lines[2:5]}
    assert counts == {"history": "2", "conversations": "0", "metrics": "0"}
    assert "aftercall projections retry" in out
    assert "ValueError: Invalid isoformat string: 'yesterday'" in out
    assert "KeyError: 'error_message'" in out

    assert main(["projections", "status", "--json"]) == 0
    found = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert [p["error_type"] for p in found["history"]["parked"]] == ["ValueError", "KeyError"]
    timeless, fixable = found["history"]["parked"]
    assert (timeless["stream"], timeless["type"]) == (
        delivery_stream(PHONE),
        "DeliveryStatusChanged",
    )
    assert timeless["event_id"]
    assert found["metrics"]["parked"] == []

    assert main(["projections", "retry", "metrics"]) == 0
    assert capsys.readouterr().out == "nothing is parked in metrics\n"

    assert main(["projections", "retry"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"history: event {timeless['position']} (DeliveryStatusChanged in"
        f" {delivery_stream(PHONE)}) is still parked: ValueError: Invalid isoformat string:"
        " 'yesterday'",
        f"history: event {fixable['position']} (DeliveryStatusChanged in"
        f" {delivery_stream(PHONE)}) applies now: unparked",
        "1 of 2 parked events unparked",
    ]
    assert "1 still parked" in captured.err
    assert "Traceback" not in captured.err

    assert main(["history", PHONE, "--json"]) == 0
    messages = {m["message_sid"]: m for m in json.loads(capsys.readouterr().out)}
    assert messages["SMfixable"]["status"] == "read"
    assert "SMtime" not in messages

    assert main(["projections", "status", "--json"]) == 0
    found = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert [p["position"] for p in found["history"]["parked"]] == [timeless["position"]]
    assert found["history"]["parked"][0]["attempts"] == timeless["attempts"] + 1

    assert main(["projections", "retry", "nope"]) == 2
    assert "no projection named nope" in capsys.readouterr().err


async def test_readyz_is_degraded_while_a_projection_has_parked_events(
    store: EventStore,
) -> None:
    """Still 200: the service serves; the JSON says what is missing from its read models."""
    async with (
        running_aftercall(store) as ac,
        httpx.AsyncClient(base_url=ac.url, timeout=10) as http,
    ):
        before = await http.get("/readyz")
        assert (before.status_code, before.json()["status"], before.json()["degraded"]) == (
            200,
            "ready",
            [],
        )
        recorded = await store.append(delivery_stream(ANA), [unreadable_time("SMtime")])
        runner = ac.system.projections
        assert runner is not None
        with trio.fail_after(30):  # the real clock: parked after its tries, ~1.5 s
            await runner.wait_until(recorded.position, ["history"])

        answer = await http.get("/readyz")
        assert answer.status_code == 200
        body = answer.json()
        assert (body["status"], body["problems"]) == ("degraded", [])
        error = "ValueError: Invalid isoformat string: 'yesterday'"
        assert body["degraded"] == [
            f"projection history: 1 parked event; the first, position {recorded.position}"
            f" (DeliveryStatusChanged), failed with {error}"
        ]
        assert body["parked_events"] == {
            "history": {
                "count": 1,
                "first_position": recorded.position,
                "first_type": "DeliveryStatusChanged",
                "first_error": error,
            }
        }
        assert ANA not in answer.text  # it answers anyone: no phone number
