"""The machine's ceiling for a bare signed Twilio webhook: the baseline of the conversation
benchmark, measured on this machine, now.

Run by hand (``benchmarks/conversation.py`` runs it first, too)::

    .venv/bin/python -m benchmarks.bare_webhook [--seconds 8] [--connections 32]

What docs/stack.md measured before aftercall existed: "A Quart-Trio POST handler
that parses a 15-field Twilio form, validates its signature and returns empty TwiML, under
``hypercorn -k trio``, loaded by wrk on the same machine (1 thread, 32 connections):
~1,570 requests/s". The issue's floors were set against that number, on that machine. These
VMs' speed differs from machine to machine and from minute to minute (up to twice), so the
same handler is served here the same way and loaded for a few seconds: its requests per
second say how fast this machine is right now, in the unit the floors were written in.

The load comes from this process (trio tasks on kept-alive connections through
`clients.http1`), not wrk, which a fresh machine does not have. The handler's process is
the one that saturates: it spends about three times what the client spends per request.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio
from twilio.request_validator import RequestValidator

from benchmarks._processes import cpu_seconds, hypercorn_command, wait_until_answering
from clients.http1 import Http1Transport, Target
from sandbox.environment import free_port
from sandbox.twilio._protocol import inbound_params

ROOT = Path(__file__).resolve().parents[1]
#: What stack.md measured for this handler (requests/s).
NOTED_CEILING = 1570
TOKEN = "0123456789abcdef0123456789abcdef"
PATH = "/webhooks/twilio/whatsapp"
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

app = QuartTrio("bare_webhook")


@app.post(PATH)
async def webhook() -> Response:
    """The handler stack.md measured: parse the form, check the signature, empty TwiML."""
    form = await request.form
    params = {name: form[name] for name in form}
    url = f"http://{request.host}{PATH}"
    if not RequestValidator(TOKEN).validate(
        url, params, request.headers.get("X-Twilio-Signature", "")
    ):
        return Response("bad signature", status=403)
    return Response(TWIML, status=200, mimetype="application/xml")


def _form(index: int) -> dict[str, str]:
    """A 15-field inbound WhatsApp form, as the Twilio stand-in posts it."""
    return inbound_params(
        sid=f"SM{index:032x}", account_sid="AC" + "0" * 32, from_phone="+15557000001",
        to="whatsapp:+14155238886", body=f"question {index}", profile_name="Bench",
    )  # fmt: skip


@attrs.frozen
class Baseline:
    requests_per_second: float
    refused: int
    server_cpu_ms_per_request: float

    @property
    def machine_factor(self) -> float:
        """How many times faster than stack.md's machine this one is right now (<1: slower)."""
        return self.requests_per_second / NOTED_CEILING


def mean_baseline(before: Baseline, after: Baseline) -> Baseline:
    """Two measurements around a window, as one: the machine's speed drifts within it."""
    return Baseline(
        (before.requests_per_second + after.requests_per_second) / 2,
        before.refused + after.refused,
        (before.server_cpu_ms_per_request + after.server_cpu_ms_per_request) / 2,
    )


async def measure(
    seconds: float = 8.0, connections: int = 32, app_spec: str = "benchmarks.bare_webhook:app"
) -> Baseline:
    """Serve the handler (``app_spec``) under ``hypercorn -k trio`` and load it for
    ``seconds``."""
    port = free_port()
    command = hypercorn_command(app_spec, port)
    server = await trio.to_thread.run_sync(
        partial(
            subprocess.Popen, command, cwd=ROOT, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}{PATH}"
    target = Target.of(url)
    validator = RequestValidator(TOKEN)
    try:
        async with Http1Transport(max_idle_per_origin=connections) as transport:
            await wait_until_answering(url)
            done = 0
            refused = 0

            async def client(offset: int, until: float) -> None:
                nonlocal done, refused
                index = offset
                while trio.current_time() < until:
                    params = _form(index)
                    body = urlencode(params).encode()
                    headers = [
                        (b"content-type", b"application/x-www-form-urlencoded"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-twilio-signature",
                         validator.compute_signature(url, params).encode()),
                    ]  # fmt: skip
                    answer = await transport.request(b"POST", target, headers, body,
                                                     answer_within=30)  # fmt: skip
                    if answer.status == 200:
                        done += 1
                    else:
                        refused += 1
                    index += connections

            warm_until = trio.current_time() + 1.0
            async with trio.open_nursery() as nursery:
                for offset in range(connections):
                    nursery.start_soon(client, offset, warm_until)
            done = refused = 0
            cpu_before = cpu_seconds(server.pid)
            started = time.monotonic()
            until = trio.current_time() + seconds
            async with trio.open_nursery() as nursery:
                for offset in range(connections):
                    nursery.start_soon(client, offset, until)
            elapsed = time.monotonic() - started
            cpu_used = cpu_seconds(server.pid) - cpu_before
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        await trio.to_thread.run_sync(server.wait, 30)
    return Baseline(done / elapsed, refused, 1000 * cpu_used / max(done, 1))


def describe(baseline: Baseline) -> str:
    return (
        f"bare signed webhook handler (stack.md's baseline): "
        f"{baseline.requests_per_second:,.0f} req/s at {baseline.server_cpu_ms_per_request:.2f} "
        f"ms CPU each; stack.md noted {NOTED_CEILING:,}: this machine is "
        f"{baseline.machine_factor:.2f}x that one"
    )


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    baseline = trio.run(measure, args.seconds, args.connections)
    print(describe(baseline))
    if baseline.refused:
        print(f"  {baseline.refused} requests were refused: the signature check failed")


if __name__ == "__main__":
    main()
