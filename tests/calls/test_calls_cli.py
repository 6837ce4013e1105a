"""``aftercall batch process|latest``, ``aftercall call`` and ``aftercall agent chat``, run as a
user runs them (a real process) against the stand-ins on loopback."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import trio

from aftercall.calls_cli import process_command
from clients.elevenlabs.api import ElevenLabsAPI
from events.batches import batch_stream
from events.store import EventStore
from sandbox.elevenlabs import CallScript, ElevenLabsStandIn, serve_elevenlabs
from sandbox.twilio import TwilioStandIn, serve_twilio
from tests.calls.test_call_monitor import phones, submit
from tests.e2e.harness import running_aftercall

ROOT = Path(__file__).parents[2]


async def aftercall(env: dict[str, str], *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TWILIO_", "ELEVENLABS_", "AFTERCALL_", "DATABASE_URL"))
    }
    result = await trio.run_process(
        [sys.executable, "-m", "aftercall", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        env={**clean, **env},
        cwd=ROOT,
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def service_env(el: ElevenLabsStandIn, tw: TwilioStandIn, data_dir: Path) -> dict[str, str]:
    return {
        "AFTERCALL_DATA_DIR": str(data_dir),
        "PUBLIC_BASE_URL": "http://127.0.0.1:9",
        "ELEVENLABS_BASE_URL": str(el.base_url),
        "ELEVENLABS_API_KEY": "xi_test_key_do_not_print",
        "DEFAULT_AGENT_ID": "agent_sandbox",
        "TWILIO_API_BASE_URL": str(tw.base_url),
        "TWILIO_ACCOUNT_SID": tw.account_sid,
        "TWILIO_AUTH_TOKEN": tw.auth_token,
        "TWILIO_WHATSAPP_FROM": tw.whatsapp_from,
    }


async def test_batch_process_twice_then_latest(tmp_path: Path) -> None:
    numbers = phones(3, "+1555600")
    standin = ElevenLabsStandIn(api_key="xi_test_key_do_not_print")
    standin.call_scripts[numbers[1]] = CallScript(outcomes=("voicemail",))
    async with (
        serve_elevenlabs(standin) as el,
        serve_twilio(TwilioStandIn(status_callbacks=False)) as tw,
    ):
        env = service_env(el, tw, tmp_path)
        batch_id = submit(el, numbers)
        code, out, err = await aftercall(env, "batch", "latest")
        assert code == 0, err
        assert "not looked at yet" in out

        await el.advance(120)
        code, out, err = await aftercall(env, "batch", "process", batch_id, "--wait", "20")
        assert code == 0, err
        assert f"batch {batch_id} 'October invoices': completed, 3 recipients" in out
        assert "3 call(s) recorded now, 2 follow-up(s) started" in out
        assert "the batch is finished" in out
        assert f"{numbers[0]}: call completed, first message sent (SM" in out
        assert len(tw.received(numbers[0])) == 1

        code, again, err = await aftercall(env, "batch", "process", batch_id)
        assert code == 0, err
        assert again.count("already done") == 3
        assert "0 call(s) recorded now, 0 follow-up(s) started" in again
        assert len(tw.received(numbers[0])) == 1

        code, latest, err = await aftercall(env, "batch", "latest")
        assert code == 0, err
        assert "finished (2 completed, 1 voicemail, 0 failed, 0 cancelled)" in latest
        assert "call completed, first message sent" in latest
        assert "call failed (voicemail): no WhatsApp message" in latest
        for text in (out, again, latest, err):
            assert "xi_test_key_do_not_print" not in text


async def test_batch_process_explains_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    async with (
        serve_elevenlabs(ElevenLabsStandIn(api_key="xi_right")) as el,
        serve_twilio(TwilioStandIn()) as tw,
    ):
        env = service_env(el, tw, tmp_path)
        code, _, err = await aftercall(env, "batch", "process", "btcal_missing")
        assert code == 2
        assert err.strip().startswith("aftercall: ElevenLabs refused GET")
        assert "HTTP 401" in err
        assert "check ELEVENLABS_API_KEY" in err
        assert "Traceback" not in err
        assert "xi_test_key_do_not_print" not in err

        env["ELEVENLABS_API_KEY"] = "xi_right"
        code, _, err = await aftercall(env, "batch", "process", "btcal_missing/../x")
        assert code == 2
        assert "HTTP 404" in err
        assert len(err.strip().splitlines()) == 1, err


async def test_call_places_one_outbound_call(tmp_path: Path) -> None:
    async with serve_elevenlabs(ElevenLabsStandIn()) as el:
        env = {"ELEVENLABS_BASE_URL": str(el.base_url), "DEFAULT_AGENT_ID": "agent_sandbox"}
        code, _, err = await aftercall(env, "call", "+1 555 700 0001")
        assert code == 2
        assert "ELEVENLABS_AGENT_PHONE_NUMBER_ID" in err

        code, _, err = await aftercall(env, "call", "0612345678", "--phone-number-id", "phnum_1")
        assert code == 2
        assert "no country code" in err

        env["ELEVENLABS_AGENT_PHONE_NUMBER_ID"] = "phnum_sandbox"
        code, out, err = await aftercall(env, "call", "+1 555 700 0001", "--var", "user_name=Ana")
        assert code == 0, err
        [record] = el.conversations.values()
        assert record.phone_call is not None
        assert record.phone_call.external_number == "+15557000001"
        assert record.initiation["dynamic_variables"] == {"user_name": "Ana"}
        assert f"conversation {record.conversation_id}" in out
        assert "aftercall events show phone-+15557000001" in out


async def test_agent_chat_prints_every_protocol_event() -> None:
    async with serve_elevenlabs(ElevenLabsStandIn()) as el:
        env = {"ELEVENLABS_BASE_URL": str(el.base_url), "DEFAULT_AGENT_ID": "agent_sandbox"}
        code, out, err = await aftercall(
            env, "agent", "chat", stdin=b"What is my order status?\n/quit\n"
        )
        assert code == 0, err
        lines = out.splitlines()
        assert any(
            line.startswith("-> {") and "conversation_initiation_client_data" in line
            for line in lines
        )
        assert any(line.startswith("<- conversation_initiation_metadata") for line in lines)
        assert any(line.startswith("-> {") and '"user_message"' in line for line in lines)
        assert any(line.startswith("<- AgentResponse") for line in lines)
        assert "agent: Hello! How can I help you today?" in lines
        assert any(line.startswith("agent: ") and "order status" in line for line in lines)
        assert lines[-1].startswith("session closed: (1000")

        code, _, err = await aftercall(env, "agent", "chat", "--agent", "agent_nobody")
        assert code == 2
        assert err.startswith("aftercall: ")
        assert len(err.strip().splitlines()) == 1


async def test_process_command_in_process_with_both_stores(store: EventStore) -> None:
    numbers = phones(2, "+1555610")
    async with running_aftercall(store, elevenlabs=ElevenLabsStandIn()) as ac:
        batch_id = submit(ac.elevenlabs, numbers)
        await ac.elevenlabs.advance(60)
        api = ElevenLabsAPI(ac.system.http, str(ac.elevenlabs.base_url), None)
        lines: list[str] = []
        report = await process_command(
            store,
            api,
            ac.system.notify_phone,
            batch_id,
            wait=20,
            follow_up_failed_calls=False,
            out=lines.append,
        )
    assert report.finished
    assert sorted(report.followed_up) == numbers
    # Both went out; free text outside the window may already have failed with 63016 by
    # the time the report reads the stream (the stand-in fails it a moment after sending).
    went_out = [line for line in lines if re.search(r"first message (sent|failed) \(SM", line)]
    assert len(went_out) == 2
    settled = [r for r in await store.read_stream(batch_stream(batch_id))]
    assert [r.type for r in settled].count("RecipientSettled") == 2
    assert {r.data["source"] for r in settled} == {"cli"}
