"""What serving a request costs the stand-ins' own server (`sandbox._standin_server`)
against Hypercorn's Trio worker, the library it stands in for, serving the same app in the
same run.

Run by hand, never from the tests::

    .venv/bin/python -m benchmarks.standin_server [--requests 3000] [--concurrency 1 32]
                                                  [--rounds 3] [--max-seconds 30]

Why: `sandbox._standin_server` exists because the stand-ins share the machine's cores with
aftercall in the conversation benchmark, and its docstring says a bare ASGI app cost
~830 µs of CPU per request under Hypercorn's Trio worker and ~180 µs under it (wrk, 32
connections), a measurement never made reproducible. This makes it reproducible.

The app is the Twilio stand-in's create-message route in miniature, written here so that
neither server runs anything of the product: read the form POST body, parse it, answer 201
with the ~1 KB JSON of a queued message. Each server runs it in its own child process
(``serve_standin(app, port=...)``; ``hypercorn.trio.serve(app, config)`` with the default
config bound to 127.0.0.1, no access log), both started once, idle while the other is
loaded. The load comes from this process: ``--concurrency`` Trio tasks over kept-alive
connections through `clients.http1` (the leanest client at hand), each posting its next
form once answered, a warm-up and then ``--requests`` measured per round.

How to read the table: ``server CPU s / 1,000`` is the serving process's user + system CPU
(from /proc/<pid>/stat, before and after) per 1,000 requests, what a stand-in takes from
the cores aftercall is measured on; ``req/s`` is what the closed loop achieved, and
``load CPU`` what this process spent making the requests (on a two-core machine the two
processes share the cores, so a cheap server can make the load the limit). Rounds
alternate the servers (standin hypercorn standin hypercorn...), as these machines' speed
drifts by up to twice within minutes: compare the ratios, not the absolute figures. Each
ratio is library / hand-written, per round, then the median: a CPU ratio above 1 means
Hypercorn spends more per request, a req/s ratio below 1 means it served fewer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from benchmarks._processes import cpu_seconds, wait_until_answering
from benchmarks.http_transport import Counts, child_process, free_port, load
from clients.http1 import Http1Transport, Target
from sandbox._standin_server import serve_standin

ACCOUNT_SID: Final = "AC" + "0" * 32
PATH: Final = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
SENDER: Final = "whatsapp:+14155238886"
#: Requests before each measured round: connections opened, code paths warm.
WARM_UP: Final = 300
TIMEOUT: Final = 30.0

Scope = dict[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# ------------------------------------------------------------------ the app (child process)

_SIDS = itertools.count(1)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Create a message from a Messages-create form: 201 and its JSON (400 without ``To``)."""
    if scope["type"] == "lifespan":
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client left
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    form = dict(parse_qsl(b"".join(chunks).decode(), keep_blank_values=True))
    if scope["method"] != "POST" or "To" not in form:
        status, content = 400, b'{"code": 21604, "message": "A \'To\' phone number is required."}'
    else:
        status, content = 201, json.dumps(_message(form)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


def _message(form: dict[str, str]) -> dict[str, object]:
    """The Message resource as Twilio's REST API spells it, queued."""
    sid = f"SM{next(_SIDS):032x}"
    now = formatdate(usegmt=True)
    base = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages"
    return {
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": form.get("Body"),
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": form.get("From"),
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "status_callback": form.get("StatusCallback"),
        "subresource_uris": {"media": f"{base}/{sid}/Media.json"},
        "to": form["To"],
        "uri": f"{base}/{sid}.json",
    }


async def serve_with_standin(port: int) -> None:
    async with serve_standin(app, port=port):
        await trio.sleep_forever()


async def serve_with_hypercorn(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"
    # Hypercorn's ASGI types are stricter than this plain-dict app's.
    await hypercorn_serve(app, config)  # type: ignore[arg-type]


SERVERS: Final = {"standin": serve_with_standin, "hypercorn": serve_with_hypercorn}


# ------------------------------------------------------------------ the load


@attrs.frozen
class Round:
    number: int
    server: str
    concurrency: int
    requests: int
    failed: int
    server_cpu_seconds: float
    load_cpu_seconds: float
    wall_seconds: float
    capped: bool

    @property
    def server_cpu_per_thousand(self) -> float:
        return 1000 * self.server_cpu_seconds / max(self.requests, 1)

    @property
    def load_cpu_per_thousand(self) -> float:
        return 1000 * self.load_cpu_seconds / max(self.requests, 1)

    @property
    def per_second(self) -> float:
        return self.requests / self.wall_seconds


def _form(index: int) -> dict[str, str]:
    return {
        "To": f"whatsapp:+1555700{index % 10000:04d}",
        "From": SENDER,
        "Body": f"Answer {index}: here is what the agent said about your question, in full.",
        "StatusCallback": "https://aftercall.example.com/webhooks/twilio/status",
    }


async def measure(
    number: int, server: str, url: str, server_pid: int, requests: int, concurrency: int,
    max_seconds: float,
) -> Round:  # fmt: skip
    """One round against one server, on a fresh client: warm up, then count CPU and time."""
    target = Target.of(url)
    async with Http1Transport(max_idle_per_origin=concurrency) as transport:

        async def post(index: int) -> bool:
            body = urlencode(_form(index)).encode("ascii")
            headers = [
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-length", str(len(body)).encode()),
            ]
            answer = await transport.request(
                b"POST", target, headers, body, answer_within=TIMEOUT, connect_within=TIMEOUT
            )
            return answer.status == 201 and "sid" in json.loads(answer.body)

        await load(post, max(WARM_UP, 2 * concurrency), concurrency, Counts())
        counts = Counts()
        server_before = cpu_seconds(server_pid)
        load_before, wall_before = time.process_time(), time.perf_counter()
        with trio.move_on_after(max_seconds) as cap:
            await load(post, requests, concurrency, counts)
        wall = time.perf_counter() - wall_before
        load_cpu = time.process_time() - load_before
        server_cpu = cpu_seconds(server_pid) - server_before
    return Round(
        number, server, concurrency, counts.done, counts.failed, server_cpu, load_cpu, wall,
        cap.cancelled_caught,
    )  # fmt: skip


async def run(
    requests: int, concurrencies: list[int], rounds: int, max_seconds: float
) -> list[Round]:
    ports = {server: free_port() for server in SERVERS}
    urls = {server: f"http://127.0.0.1:{port}{PATH}" for server, port in ports.items()}
    command = [sys.executable, "-m", "benchmarks.standin_server", "--serve"]
    results: list[Round] = []
    async with (
        child_process([*command, "standin", str(ports["standin"])]) as standin,
        child_process([*command, "hypercorn", str(ports["hypercorn"])]) as hypercorn,
    ):
        pids = {"standin": standin.pid, "hypercorn": hypercorn.pid}
        for url in urls.values():
            await wait_until_answering(url)
        for concurrency in concurrencies:
            for number in range(1, rounds + 1):
                for server in SERVERS:
                    one = measure(number, server, urls[server], pids[server], requests,
                                  concurrency, max_seconds)  # fmt: skip
                    results.append(await one)
    return results


# ------------------------------------------------------------------ the report

LABELS: Final = {
    "standin": "standin: serve_standin (hand-written)",
    "hypercorn": "hypercorn: hypercorn.trio.serve (library)",
}


def table(results: list[Round], requests: int) -> str:
    rows: list[str] = []
    for concurrency in dict.fromkeys(r.concurrency for r in results):
        mine = [r for r in results if r.concurrency == concurrency]
        rows.append(f"\n{concurrency} connection(s) at once, {requests:,} requests per round:")
        rows.append(
            f"{'round':<6}{'server':<43}{'server CPU s / 1,000':>21}{'req/s':>9}"
            f"{'load CPU s / 1,000':>20}"
        )
        for r in mine:
            note = ""
            if r.capped:
                note += f"  (capped: {r.requests:,} done)"
            if r.failed:
                note += f"  ({r.failed} not answered 201 with JSON: the figures lie)"
            rows.append(
                f"{r.number:<6}{LABELS[r.server]:<43}{r.server_cpu_per_thousand:>21.3f}"
                f"{r.per_second:>9,.0f}{r.load_cpu_per_thousand:>20.3f}{note}"
            )
        cpu, rate = [], []
        for library in (r for r in mine if r.server == "hypercorn"):
            own = next(r for r in mine if r.server == "standin" and r.number == library.number)
            cpu.append(library.server_cpu_per_thousand / own.server_cpu_per_thousand)
            rate.append(library.per_second / own.per_second)
        rows.append(
            f"hypercorn / standin, median of {len(cpu)} rounds: "
            f"{statistics.median(cpu):.2f}x the server CPU per request, "
            f"{statistics.median(rate):.2f}x the requests/s "
            f"(CPU per round: {', '.join(f'{c:.2f}' for c in cpu)})"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured per round")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 32], help="connections at once"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each server")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap on one measured round")
    parser.add_argument("--serve", nargs=2, metavar=("SERVER", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        server, port = args.serve
        trio.run(SERVERS[server], int(port))
        return
    results = trio.run(run, args.requests, args.concurrency, args.rounds, args.max_seconds)
    print(table(results, args.requests))


if __name__ == "__main__":
    main()
