"""What a Twilio request costs aftercall's process: its own HTTP/1.1 transport
(`clients.http1`, what the WhatsApp sender uses) against httpx's default transport
(httpcore), the library it stands in for, in the same run.

Run by hand, never from the tests::

    .venv/bin/python -m benchmarks.http_transport [--requests 3000] [--concurrency 1 8 32]
                                                  [--rounds 3] [--max-seconds 30]

Why: `clients.http1` says httpcore's pool costs a poll system call per pooled connection
per request, and that httpx's request and response models cost more than the exchange;
that claim was measured once, by hand. This makes it reproducible.

The workload is the sender's: POST a Messages-create form (``To``, ``From``, ``Body``,
``StatusCallback``, Basic auth) and decode the ~1 KB JSON answer, from ``--concurrency``
tasks at once over kept-alive connections (8 is the sender's own cap,
``TwilioConfig.max_concurrent_requests``; 1 and 32 bracket it), to a server on 127.0.0.1
in a child process (a few lines of Trio answering a fixed JSON, so its CPU is neither
counted nor the bottleneck). Three paths, each on a fresh client, warmed up, then
``--requests`` measured:

- http1: `Http1Transport.request` with bytes, a `Target` parsed once, an `Answer` back:
  exactly how `clients.twilio.sender` calls it (form urlencoded, ``json.loads`` of the body);
- httpx: ``httpx.AsyncClient`` with its default transport, ``post(url, data=form)`` and
  ``response.json()``: what the hand-written part replaces;
- httpx+http1: the same ``httpx.AsyncClient`` over `Http1Transport`, which splits the cost
  between httpx's models (same here as in httpx) and the transport (not the same).

Both sides get the same fairness: the Basic auth header is built once (httpx's ``auth=``
would add an auth flow per request), and both keep as many idle connections as there are
tasks (httpx's default keeps 20, `Http1Transport`'s too; at 32 tasks either would churn).

How to read the table: ``CPU s / 1,000`` is this process's CPU time (``time.process_time``)
per 1,000 requests, the cost the sender adds to aftercall; ``req/s`` is what the loop
achieved; ``server CPU`` says whether the server was the limit (it shares the machine's
cores). Rounds alternate the paths (A B C A B C...), since these machines' speed drifts
by up to twice within minutes; compare the ratios, not the absolute figures. Each ratio
is library / hand-written, per round, then the median: a CPU ratio above 1 means httpx
spends more per request, a req/s ratio below 1 means httpx achieved fewer.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from base64 import b64encode
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import urlencode

import attrs
import httpx
import trio

from benchmarks._processes import cpu_seconds, wait_until_answering
from clients.http1 import Http1Transport, Target

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT_SID: Final = "AC" + "0" * 32
AUTH_TOKEN: Final = "0123456789abcdef0123456789abcdef"
PATH: Final = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
SENDER: Final = "whatsapp:+14155238886"
STATUS_CALLBACK: Final = "https://aftercall.example.com/webhooks/twilio/status"
#: Requests before each measured round: connections opened, code paths warm.
WARM_UP: Final = 300
#: What the sender sends with every request (clients/twilio/sender.py), built once.
BASIC: Final = b"Basic " + b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode())
HEADERS: Final = [
    (b"accept", b"application/json"),
    (b"user-agent", b"aftercall"),
    (b"authorization", BASIC),
    (b"content-type", b"application/x-www-form-urlencoded"),
]
#: Seconds a request may take (the sender's ``request_timeout``; never reached here).
TIMEOUT: Final = 30.0


# ------------------------------------------------------------------ the server (child process)


def _answer() -> bytes:
    """A created message as Twilio answers it: 201 and ~1 KB of JSON."""
    sid = "SM" + "0123456789abcdef" * 2
    base = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages"
    message = {
        "account_sid": ACCOUNT_SID,
        "api_version": "2010-04-01",
        "body": "Thanks for calling! Here is the summary you asked for: " + "x" * 180,
        "date_created": "Thu, 24 Jul 2025 10:00:00 +0000",
        "date_sent": None,
        "date_updated": "Thu, 24 Jul 2025 10:00:00 +0000",
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": SENDER,
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {"media": f"{base}/{sid}/Media.json"},
        "to": "whatsapp:+15557000001",
        "uri": f"{base}/{sid}.json",
    }
    body = json.dumps(message).encode()
    head = (
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


ANSWER: Final = _answer()


async def _answer_connection(stream: trio.SocketStream) -> None:
    """Answer every request on a connection with `ANSWER`, until the client closes it.
    Parses only what it must (the end of the head, ``Content-Length``): the leanest server
    at hand, so that the client's cost is what limits the loop."""
    buffer = b""
    async with stream:
        try:
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                    continue
                head = buffer[:end].lower()
                start = head.find(b"\r\ncontent-length:")
                length = 0 if start < 0 else int(head[start + 17 :].split(b"\r\n", 1)[0])
                total = end + 4 + length
                while len(buffer) < total:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[total:]
                await stream.send_all(ANSWER)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def serve(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    await trio.serve_listeners(_answer_connection, listeners)


@asynccontextmanager
async def child_process(command: list[str]) -> AsyncIterator[trio.Process]:
    """``command`` in a child process for the block (in the repository), terminated and
    reaped however the block ends."""
    process = await trio.lowlevel.open_process(command, cwd=ROOT)
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def free_port() -> int:
    """A port nothing on 127.0.0.1 listens on right now (for a server whose URL must be
    known before it starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ the load

#: One request: its index in; whether it was answered 201 with the message's JSON out.
Send = Callable[[int], Awaitable[bool]]


def _form(index: int) -> dict[str, str]:
    """A reply part as the sender posts it."""
    return {
        "To": f"whatsapp:+1555700{index % 10000:04d}",
        "From": SENDER,
        "Body": f"Answer {index}: here is what the agent said about your question, in full.",
        "StatusCallback": STATUS_CALLBACK,
    }


@asynccontextmanager
async def client(path: str, url: str, concurrency: int) -> AsyncIterator[Send]:
    """The ``send`` of one path, on a fresh client closed after the block."""
    if path == "http1":
        async with Http1Transport(max_idle_per_origin=concurrency) as transport:
            target = Target.of(url)

            async def send_bytes(index: int) -> bool:
                body = urlencode(_form(index)).encode("ascii")
                headers = [*HEADERS, (b"content-length", str(len(body)).encode())]
                answer = await transport.request(
                    b"POST", target, headers, body, answer_within=TIMEOUT, connect_within=TIMEOUT
                )
                return answer.status == 201 and "sid" in json.loads(answer.body)

            yield send_bytes
        return
    models_transport: httpx.AsyncBaseTransport = (
        Http1Transport(max_idle_per_origin=concurrency)
        if path == "httpx+http1"
        else httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=concurrency)
        )
    )
    headers = {
        "accept": "application/json",
        "user-agent": "aftercall",
        "authorization": BASIC.decode(),
    }
    async with httpx.AsyncClient(
        transport=models_transport, headers=headers, timeout=TIMEOUT
    ) as http:  # closes its transport too

        async def send_models(index: int) -> bool:
            response = await http.post(url, data=_form(index))
            return response.status_code == 201 and "sid" in response.json()

        yield send_models


@attrs.define
class Counts:
    """Requests answered as expected, and not, so far (read even after a cancellation)."""

    done: int = 0
    failed: int = 0


async def load(send: Send, count: int, concurrency: int, counts: Counts) -> None:
    """``count`` requests from ``concurrency`` tasks, each sending its next once answered."""
    left = count

    async def task() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if await send(left):
                counts.done += 1
            else:
                counts.failed += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(task)


@attrs.frozen
class Round:
    number: int
    path: str
    concurrency: int
    requests: int
    failed: int
    cpu_seconds: float
    wall_seconds: float
    server_cpu_seconds: float
    capped: bool

    @property
    def cpu_per_thousand(self) -> float:
        return 1000 * self.cpu_seconds / max(self.requests, 1)

    @property
    def per_second(self) -> float:
        return self.requests / self.wall_seconds

    @property
    def server_cpu_per_thousand(self) -> float:
        return 1000 * self.server_cpu_seconds / max(self.requests, 1)


async def measure(
    number: int, path: str, url: str, server_pid: int, requests: int, concurrency: int,
    max_seconds: float,
) -> Round:  # fmt: skip
    """One round of one path on a fresh client: warm up, then count CPU and time."""
    async with client(path, url, concurrency) as send:
        await load(send, max(WARM_UP, 2 * concurrency), concurrency, Counts())
        counts = Counts()
        server_before = cpu_seconds(server_pid)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        with trio.move_on_after(max_seconds) as cap:
            await load(send, requests, concurrency, counts)
        wall = time.perf_counter() - wall_before
        cpu = time.process_time() - cpu_before
        server = cpu_seconds(server_pid) - server_before
    return Round(
        number,
        path,
        concurrency,
        counts.done,
        counts.failed,
        cpu,
        wall,
        server,
        cap.cancelled_caught,
    )


PATHS: Final = ("http1", "httpx", "httpx+http1")


async def run(
    requests: int, concurrencies: list[int], rounds: int, max_seconds: float
) -> list[Round]:
    port = free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    command = [sys.executable, "-m", "benchmarks.http_transport", "--serve", str(port)]
    results: list[Round] = []
    async with child_process(command) as server:
        await wait_until_answering(url)
        for concurrency in concurrencies:
            for number in range(1, rounds + 1):
                for path in PATHS:
                    results.append(
                        await measure(
                            number, path, url, server.pid, requests, concurrency, max_seconds
                        )
                    )
    return results


# ------------------------------------------------------------------ the report

LABELS: Final = {
    "http1": "http1: Http1Transport.request (sender's)",
    "httpx": "httpx: AsyncClient, httpcore (library)",
    "httpx+http1": "httpx+http1: AsyncClient over Http1Transport",
}


def ratios(results: list[Round], path: str, base: str) -> tuple[list[float], list[float]]:
    """Per round, ``path`` / ``base``: CPU per request, and requests per second."""
    cpu, rate = [], []
    for mine in (r for r in results if r.path == path):
        other = next(r for r in results if r.path == base and r.number == mine.number)
        cpu.append(mine.cpu_per_thousand / other.cpu_per_thousand)
        rate.append(mine.per_second / other.per_second)
    return cpu, rate


def table(results: list[Round], requests: int) -> str:
    rows: list[str] = []
    for concurrency in dict.fromkeys(r.concurrency for r in results):
        mine = [r for r in results if r.concurrency == concurrency]
        rows.append(f"\n{concurrency} task(s) at once, {requests:,} requests per round:")
        rows.append(
            f"{'round':<6}{'path':<46}{'CPU s / 1,000':>14}{'req/s':>9}{'server CPU s / 1,000':>22}"
        )
        for r in mine:
            note = ""
            if r.capped:
                note += f"  (capped: {r.requests:,} done)"
            if r.failed:
                note += f"  ({r.failed} not answered 201 with JSON: the figures lie)"
            rows.append(
                f"{r.number:<6}{LABELS[r.path]:<46}{r.cpu_per_thousand:>14.3f}"
                f"{r.per_second:>9,.0f}{r.server_cpu_per_thousand:>22.3f}{note}"
            )
        for path in ("httpx", "httpx+http1"):
            cpu, rate = ratios(mine, path, "http1")
            rows.append(
                f"{path} / http1, median of {len(cpu)} rounds: "
                f"{statistics.median(cpu):.2f}x the CPU per request, "
                f"{statistics.median(rate):.2f}x the requests/s "
                f"(CPU per round: {', '.join(f'{c:.2f}' for c in cpu)})"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured per round")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 32], help="tasks sending at once"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each path")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap on one measured round")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        trio.run(serve, args.serve)
        return
    results = trio.run(run, args.requests, args.concurrency, args.rounds, args.max_seconds)
    print(table(results, args.requests))


if __name__ == "__main__":
    main()
