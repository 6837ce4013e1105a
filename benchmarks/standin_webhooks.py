"""What the Twilio stand-in spends delivering webhooks: through the sandbox's own h11 client
(what it uses now) against aftercall's own HTTP/1.1 transport (what it used before, until the
sandbox stopped sharing code with the product) and against httpx, in the same run.

Run by hand, never from the tests::

    .venv/bin/python -m benchmarks.standin_webhooks [--deliveries 5000] [--concurrency 64]
                                                    [--rounds 3]

The stand-in delivers inbound-message webhooks from ``--concurrency`` simulated users at
once (its ``webhook_concurrency``, as in the conversation benchmark) to an app that checks
each signature and answers empty TwiML. The app runs in a child process, on the stand-ins'
own h11 server (the leanest at hand), so this process's CPU time is the stand-in's alone:
making the users' messages, signing them, and the HTTP client. The paths differ only in
`TwilioStandIn._exchange`:

- new: the stand-in as it is, ``sandbox._webhook_client.WebhookClient`` (h11, one write per
  request, a stack of idle connections);
- old: the baseline, the code it had before, bytes straight to ``Http1Transport.request``;
- httpx: a single ``httpx.AsyncClient`` holding every connection, the well-kept library this
  hand-written client must beat to be worth its lines (httpcore writes the headers and the
  body separately, and its pool bookkeeping is quadratic in its connections,
  encode/httpcore#1035).

Rounds alternate between the paths, as a machine's speed drifts within a run; the table
gives each path's median round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import attrs
import httpx
import trio
from twilio.request_validator import RequestValidator

from benchmarks._processes import cpu_seconds, wait_until_answering
from sandbox._standin_server import serve_standin
from sandbox.environment import free_port
from sandbox.twilio import SANDBOX_AUTH_TOKEN, TwilioStandIn, serve_twilio
from sandbox.twilio._standin import CONNECT_TIMEOUT, KEEPALIVE_EXPIRY, WebhookAnswer

# Benchmarks may use the product (the sandbox may not); the transport is moving from
# actors/ to clients/, so either place will do.
try:
    from clients.http1 import Http1Transport, Target
except ImportError:
    from actors.http1 import (  # type: ignore[no-redef, import-not-found, unused-ignore]
        Http1Transport,
        Target,
    )

ROOT = Path(__file__).resolve().parents[1]
PATH = "/webhooks/twilio/whatsapp"
TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
#: Deliveries before each measured round: connections opened, caches and code paths warm.
WARM_UP = 500

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


# ------------------------------------------------------------------ the app (child process)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept a signed Twilio webhook with empty TwiML (403 if the signature is wrong)."""
    if scope["type"] != "http":
        return  # no lifespan: the server serves the app without one
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    headers = dict(scope["headers"])
    url = f"http://{headers[b'host'].decode()}{scope['path']}"
    params = dict(parse_qsl(body.decode(), keep_blank_values=True))
    signature = headers.get(b"x-twilio-signature", b"").decode()
    if scope["method"] == "POST" and RequestValidator(SANDBOX_AUTH_TOKEN).validate(
        url, params, signature
    ):
        status, content, kind = 200, TWIML, b"text/xml"
    else:
        status, content, kind = 403, b"bad signature", b"text/plain"
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]}
    )
    await send({"type": "http.response.body", "body": content})


async def serve(port: int) -> None:
    async with serve_standin(app, port=port):
        await trio.sleep_forever()


# ------------------------------------------------------------------ the baseline


@attrs.define(eq=False)
class Http1StandIn(TwilioStandIn):
    """The stand-in as it was: each webhook through aftercall's `Http1Transport`, as bytes,
    its `Target` parsed once per URL."""

    transport: Http1Transport | None = None
    _targets: dict[str, Target] = attrs.field(factory=dict, init=False)

    async def _exchange(self, url: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        assert self.transport is not None, "give the baseline its transport"
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = Target.of(url)
        raw = [(name.encode(), value.encode()) for name, value in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        answer = await self.transport.request(
            b"POST", target, raw, body,
            answer_within=self.webhook_timeout, connect_within=CONNECT_TIMEOUT,
        )  # fmt: skip
        content_type = answer.header(b"content-type")
        return WebhookAnswer(
            answer.status, None if content_type is None else content_type.decode(), answer.body
        )


@attrs.define(eq=False)
class OneClientStandIn(TwilioStandIn):
    """The stand-in with one ``httpx.AsyncClient`` for every webhook (and so one pool of
    ``webhook_concurrency`` connections), the deadline kept as the stand-in keeps it."""

    client: httpx.AsyncClient | None = None

    async def _exchange(self, url: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        assert self.client is not None, "give the variant its client"
        seconds = self.webhook_timeout
        exchange = trio.CancelScope()

        async def trace(event: str, info: Mapping[str, object]) -> None:
            if event == "http11.send_request_headers.started":
                exchange.deadline = trio.current_time() + seconds

        with exchange:
            response = await self.client.post(
                url,
                content=body,
                headers=headers,
                timeout=httpx.Timeout(seconds, connect=CONNECT_TIMEOUT),
                extensions={"trace": trace},
            )
            return WebhookAnswer(
                response.status_code, response.headers.get("content-type"), response.content
            )
        raise httpx.ReadTimeout(f"no answer within {seconds:g} s")


# ------------------------------------------------------------------ the load


@attrs.frozen
class Round:
    path: str
    deliveries: int
    cpu_seconds: float
    wall_seconds: float
    server_cpu_seconds: float
    failed: int

    @property
    def cpu_per_thousand(self) -> float:
        return 1000 * self.cpu_seconds / self.deliveries

    @property
    def server_cpu_per_thousand(self) -> float:
        return 1000 * self.server_cpu_seconds / self.deliveries

    @property
    def per_second(self) -> float:
        return self.deliveries / self.wall_seconds


async def deliver(twilio: TwilioStandIn, count: int, concurrency: int) -> None:
    """``count`` webhooks from ``concurrency`` users writing at once, one message each at
    a time (a user writes again once the app has answered)."""
    left = count

    async def user(number: int) -> None:
        nonlocal left
        phone = f"+1555700{number:04d}"
        while left > 0:
            left -= 1
            await twilio.user_says(phone, f"question {left}")

    async with trio.open_nursery() as nursery:
        for number in range(concurrency):
            nursery.start_soon(user, number)


async def measure(path: str, url: str, server_pid: int, deliveries: int, concurrency: int) -> Round:
    """One round on a fresh stand-in: warm up, then count CPU and time for ``deliveries``."""
    limits = httpx.Limits(
        max_connections=None,
        max_keepalive_connections=concurrency,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    async with (
        Http1Transport(max_idle_per_origin=concurrency) as transport,
        httpx.AsyncClient(limits=limits, trust_env=False) as client,
    ):
        client.headers.clear()
        standins: dict[str, Callable[[], TwilioStandIn]] = {
            "new": lambda: TwilioStandIn(webhook_concurrency=concurrency),
            "old": lambda: Http1StandIn(transport=transport, webhook_concurrency=concurrency),
            "httpx": lambda: OneClientStandIn(client=client, webhook_concurrency=concurrency),
        }
        async with serve_twilio(standins[path]()) as twilio:
            twilio.webhook_url = url
            twilio.read_receipts = twilio.status_callbacks = False
            await deliver(twilio, WARM_UP, concurrency)
            warm = len(twilio.deliveries)
            server_before = cpu_seconds(server_pid)
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            await deliver(twilio, deliveries, concurrency)
            wall = time.perf_counter() - wall_before
            cpu = time.process_time() - cpu_before
            server = cpu_seconds(server_pid) - server_before
            measured = twilio.deliveries[warm:]
    failed = sum(1 for d in measured if d.status_code != 200 or d.debugger_code is not None)
    return Round(path, len(measured), cpu, wall, server, failed)


async def run(deliveries: int, concurrency: int, rounds: int) -> list[Round]:
    port = free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    command = [sys.executable, "-m", "benchmarks.standin_webhooks", "--serve", str(port)]
    results: list[Round] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(trio.run_process, command, cwd=ROOT))
        await wait_until_answering(url)
        for _ in range(rounds):
            for path in PATHS:
                results.append(await measure(path, url, server.pid, deliveries, concurrency))
        nursery.cancel_scope.cancel()  # stops the app's process
    return results


# ------------------------------------------------------------------ the report

LABELS = {
    "old": "old: aftercall's Http1Transport (baseline)",
    "new": "new: the sandbox's own h11 client",
    "httpx": "httpx, one AsyncClient (not used)",
}
PATHS = tuple(LABELS)


def table(results: list[Round]) -> str:
    rows = [
        f"{'path':<44} {'CPU s / 1,000':>13} {'deliveries/s':>13} {'app CPU s / 1,000':>18}",
    ]
    medians: dict[str, tuple[float, float]] = {}
    for path in PATHS:
        mine = [r for r in results if r.path == path]
        cpu = statistics.median(r.cpu_per_thousand for r in mine)
        rate = statistics.median(r.per_second for r in mine)
        server = statistics.median(r.server_cpu_per_thousand for r in mine)
        medians[path] = (cpu, rate)
        rows.append(f"{LABELS[path]:<44} {cpu:>13.3f} {rate:>13,.0f} {server:>18.3f}")
    old_cpu, old_rate = medians["old"]
    for path in ("new", "httpx"):
        cpu, rate = medians[path]
        rows.append(
            f"{path} / old: {cpu / old_cpu:.2f}x the CPU per delivery, "
            f"{rate / old_rate:.2f}x the deliveries per second"
        )
    rows.append(
        "rounds (CPU s / 1,000): "
        + ", ".join(f"{r.path} {r.cpu_per_thousand:.3f}" for r in results)
    )
    failed = sum(r.failed for r in results)
    if failed:
        rows.append(f"{failed} deliveries were not answered 200 with TwiML: the figures lie")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=5000, help="measured per round")
    parser.add_argument("--concurrency", type=int, default=64, help="users writing at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each path")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        trio.run(serve, args.serve)
        return
    print(
        f"{args.deliveries:,} webhooks per round, {args.concurrency} at once, "
        f"{args.rounds} rounds of each path, medians:"
    )
    print(table(trio.run(run, args.deliveries, args.concurrency, args.rounds)))


if __name__ == "__main__":
    main()
