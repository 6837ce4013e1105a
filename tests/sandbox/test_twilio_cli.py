"""``aftercall sandbox``: starts both stand-ins, prints how to reach them, stops cleanly."""

from __future__ import annotations

import gc
import signal
import socket
import subprocess
import sys

import httpx
import pytest
import trio

from aftercall.cli import build_parser, main


def test_sandbox_command_defaults() -> None:
    args = build_parser().parse_args(["sandbox"])
    assert (args.host, args.elevenlabs_port, args.twilio_port) == ("127.0.0.1", 8010, 8020)
    assert args.twilio_webhook_url is None
    assert callable(args.handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_sandbox_serves_both_and_stops_on_signal(signum: signal.Signals) -> None:
    command = [
        sys.executable,
        "-m",
        "aftercall",
        "sandbox",
        "--elevenlabs-port",
        "0",
        "--twilio-port",
        "0",
        "--twilio-webhook-url",
        "http://127.0.0.1:9/webhooks/twilio/whatsapp",
    ]
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None
        assert process.stderr is not None
        output = b""
        while b"TWILIO_WHATSAPP_FROM=" not in output:
            chunk = await process.stdout.receive_some()
            assert chunk, output + await process.stderr.receive_some()
            output += chunk
        settings = dict(line.split("=", 1) for line in output.decode().splitlines() if "=" in line)
        async with httpx.AsyncClient() as http:
            twilio = await http.get(settings["TWILIO_API_BASE_URL"] + "/_sandbox")
            created = await http.post(
                f"{settings['TWILIO_API_BASE_URL']}/2010-04-01/Accounts/"
                f"{settings['TWILIO_ACCOUNT_SID']}/Messages.json",
                data={
                    "To": "whatsapp:+15551234567",
                    "From": settings["TWILIO_WHATSAPP_FROM"],
                    "Body": "hi",
                },
                auth=(settings["TWILIO_ACCOUNT_SID"], settings["TWILIO_AUTH_TOKEN"]),
            )
            elevenlabs = await http.get(settings["ELEVENLABS_BASE_URL"] + "/_sandbox/sessions")
        process.send_signal(signum)
        returncode = await process.wait()
        rest = b""
        while chunk := await process.stderr.receive_some():
            rest += chunk
    assert twilio.json()["webhook_url"] == "http://127.0.0.1:9/webhooks/twilio/whatsapp"
    assert created.status_code == 201
    assert elevenlabs.status_code < 500
    assert returncode == 0
    assert b"Traceback" not in rest


# Hypercorn leaves the socket whose bind failed unclosed (hypercorn/config.py
# create_sockets); the process is exiting then, so only this test sees the warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_busy_port_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = main(["sandbox", "--elevenlabs-port", "0", "--twilio-port", str(port)])
    gc.collect()
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("aftercall: cannot listen on 127.0.0.1")
    assert "Traceback" not in error
