"""How fast the operator console answers with a large log, and how fast a page goes live.

Run by hand (never in the tests)::

    .venv/bin/python -m benchmarks.console [--conversations 100000] [--requests 200]
        [--rate 50] [--seconds 20] [--watched 20] [--keep]
        [--dsn postgresql://postgres@127.0.0.1:5432/test]

1. Seeds a database (``aftercall_console_bench``) with ``--conversations`` conversations:
   two in five are realistic ones of ``tests/projections/workload.py`` (calls, first
   messages, turns, fallbacks, failures, statuses in and out of order; ~20 events each),
   the rest a call, its first message and its delivery (4 events), spread over the last
   week. The events go in with COPY (the store's append path would take most of an hour for
   a million); the read models are then built by the real ``rebuild`` (every projection,
   the console's included). ``--keep`` keeps the database, and a later ``--keep`` run with
   the same size reuses it.
2. Runs aftercall as production does (``hypercorn -k trio web.app:app`` in its own process)
   on that database, with the stand-ins in this process, and signs an operator in.
3. Asks each page ``--requests`` times, one request at a time, after a warm-up: the
   conversation list (first page, the next pages by keyset, filtered by state, searched),
   one conversation (a different phone each time), the overview. Baselines in the same
   run: ``/healthz`` (what any request costs: HTTP, routing, the middleware) and the JSON
   API's conversation list (``/api/conversations?limit=50``, the projections' own query).
4. Live updates: opens a conversation page's event stream for ``--watched`` phones, then
   sends inbound WhatsApp messages at ``--rate`` per second for ``--seconds`` (one in ten
   to a watched phone, the others to other phones of a pool ten times as large, every one
   answered by the agent, with Twilio's status callbacks), and times each watched message
   from the moment the Twilio stand-in starts posting its webhook to the moment the page's
   stream carries it. Its baseline, under the same load: the inbound webhook's own answer
   (the message recorded in the log), which no page can beat.

The machine's other work counts: on a shared two-core VM, run it when nothing else runs
(``uptime``), and compare rows with the baselines of the same run.

Floors (issue 18): each page under 150 ms at p99, live updates within 1 s at p99.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests.projections.workload as workload
from aftercall.operator_store import open_operator_store
from aftercall.storage import open_read_models
from benchmarks._processes import hypercorn_command
from events.calls import CallCompleted
from events.conversation import (
    DeliveryStatusChanged,
    ReplyRequested,
    ReplySent,
    delivery_stream,
    phone_stream,
)
from events.postgres import PostgresEventStore, open_postgres_store
from events.postgres_bridge import Connection
from events.store import JSON_ENCODER, stream_category
from projections.queries import percentile
from projections.runner import ALL_PROJECTIONS, rebuild
from sandbox.elevenlabs import DEFAULT_AGENT_ID, ElevenLabsStandIn, serve_elevenlabs
from sandbox.environment import free_port, stand_in_environment
from sandbox.twilio import TwilioStandIn, serve_twilio
from tests.console.harness import csrf_of, event_stream
from web.console.accounts import OperatorAccounts

ROOT = Path(__file__).resolve().parents[1]
BASE_DSN = "postgresql://postgres@127.0.0.1:5432/test"
BENCH_DB = "aftercall_console_bench"
SEEDED = "bench_console_seeded"
OPERATOR = "bench"
PASSWORD = "benchmark password " + uuid.uuid4().hex
ADMIN_TOKEN = "bench-" + uuid.uuid4().hex
FLOOR_PAGE_P99_MS = 150.0
FLOOR_LIVE_P99_MS = 1000.0
#: Conversations seeded per COPY.
CHUNK = 5000
#: The agent of the seeded calls (tests/projections/workload.py's).
SEEDED_AGENT = "agent_1"
NAMES = ("Ana", "Bruno", "Chloé", "Dmitri", "Efua", "Farid", "Grace", "Hiro", "Inés", "Jonas")


# -- seeding ------------------------------------------------------------------------------
def _psql(dsn: str, sql: str) -> str:
    found = subprocess.run(
        ["psql", dsn, "-qAtc", sql], check=True, capture_output=True, text=True, timeout=600
    )
    return found.stdout.strip()


def _dsn(base: str, database: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + database


def _light(index: int, rng: random.Random, start: datetime) -> list[workload.Append]:
    """A call, its first message, and Twilio saying it was delivered."""
    phone = workload.phone_number(index)
    call_id = f"conv_light_{index}"
    ended = start + timedelta(seconds=rng.uniform(0, 7 * 24 * 3600))
    sid = f"SM{index:010d}{'1' * 22}"
    name = f"{rng.choice(NAMES)} {index}"
    return [
        workload.Append(
            phone_stream(phone),
            (
                workload.encode(
                    CallCompleted(
                        call_id,
                        SEEDED_AGENT,
                        phone,
                        f"summary {index}",
                        dynamic_variables={"user_name": name},
                        ended_at=ended,
                    )
                ),
                workload.encode(
                    ReplyRequested(
                        f"r{index}x0",
                        "first_message",
                        (f"Hi {name}",),
                        ended + timedelta(seconds=2),
                        call_conversation_id=call_id,
                    )
                ),
                workload.encode(
                    ReplySent(
                        f"r{index}x0",
                        0,
                        sid,
                        "queued",
                        ended + timedelta(seconds=2.3),
                        send_started_at=ended + timedelta(seconds=2.1),
                    )
                ),
            ),
        ),
        workload.Append(
            delivery_stream(phone),
            (
                workload.encode(
                    DeliveryStatusChanged(sid, "delivered", ended + timedelta(seconds=4))
                ),
            ),
        ),
    ]


_TIME_FIELDS = (
    "received_at",
    "sent_at",
    "requested_at",
    "answered_at",
    "asked_at",
    "opened_at",
    "closed_at",
    "failed_at",
    "at",
    "ended_at",
)


def _rows(appends: Sequence[workload.Append], start: datetime) -> Iterator[tuple[Any, ...]]:
    """The events as rows of the ``events`` table, versions counted per stream, each
    recorded when it says it happened (as the service would have recorded it)."""
    versions: dict[str, int] = {}
    last = start
    for append in appends:
        for event in append.events:
            version = versions.get(append.stream, 0) + 1
            versions[append.stream] = version
            for field in _TIME_FIELDS:
                value = event.data.get(field)
                if isinstance(value, str):
                    last = datetime.fromisoformat(value)
                    break
            yield (
                append.stream,
                stream_category(append.stream),
                version,
                event.type,
                JSON_ENCODER.encode(event.data),
                "{}",
                event.event_id,
                last,
            )


async def _copy(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    await conn.copy_records_to_table(
        "events",
        records=rows,
        columns=[
            "stream",
            "category",
            "version",
            "type",
            "data",
            "metadata",
            "event_id",
            "recorded_at",
        ],
    )


async def seed(store: PostgresEventStore, conversations: int) -> int:
    """Write the log (see the module docstring); returns how many events."""
    start = datetime.now(UTC) - timedelta(days=7)
    workload.START = start  # the workload's clock: the last week, not March 2025
    rng = random.Random(18)
    written = 0
    began = time.perf_counter()
    for first in range(0, conversations, CHUNK):
        appends: list[workload.Append] = []
        for index in range(first, min(first + CHUNK, conversations)):
            if index % 5 < 2:
                appends += workload.conversation(18, index)
            else:
                appends += _light(index, rng, start)
        rows = list(_rows(appends, start))
        await store.database.run(_copy, rows)
        written += len(rows)
        rate = written / (time.perf_counter() - began)
        print(
            f"\r  seeded {min(first + CHUNK, conversations):,} conversations, "
            f"{written:,} events ({rate:,.0f}/s)",
            end="",
            flush=True,
        )
    print()
    return written


async def prepare(dsn: str, conversations: int, keep: bool) -> tuple[int, str]:
    """The seeded database (reused with ``--keep`` when it has this size)."""
    bench = _dsn(dsn, BENCH_DB)
    exists = _psql(dsn, f"SELECT 1 FROM pg_database WHERE datname = '{BENCH_DB}'") == "1"
    if keep and exists:
        try:
            found = _psql(bench, f"SELECT conversations, events FROM {SEEDED}")
        except subprocess.CalledProcessError:
            found = ""
        if found and int(found.split("|")[0]) == conversations:
            print(f"reusing {BENCH_DB}: {found.split('|')[1]} events")
            # What an earlier run's live phase appended is left: a few thousand events.
            return int(found.split("|")[1]), bench
    _psql(dsn, f"DROP DATABASE IF EXISTS {BENCH_DB}")
    _psql(dsn, f"CREATE DATABASE {BENCH_DB}")
    async with open_postgres_store(bench) as store:
        began = time.perf_counter()
        events = await seed(store, conversations)
        seeded = time.perf_counter() - began
        _psql(bench, "ANALYZE events")
        async with open_read_models(store) as models:
            print("  rebuilding every projection ...", flush=True)
            report = await rebuild(store, models, ALL_PROJECTIONS)
        print(
            f"  seeded {events:,} events in {seeded:.0f} s; rebuilt "
            f"{', '.join(report.projections)} in {report.seconds:.0f} s "
            f"({report.events_per_second:,.0f} events/s)"
        )
    # As autovacuum would have by now: visibility maps (index-only scans) and statistics.
    _psql(bench, "VACUUM ANALYZE")
    _psql(bench, f"CREATE TABLE {SEEDED} (conversations int, events int)")
    _psql(bench, f"INSERT INTO {SEEDED} VALUES ({conversations}, {events})")
    return events, bench


# -- measuring ----------------------------------------------------------------------------
@attrs.define
class Row:
    name: str
    samples: list[float]
    floor: float | None = None

    def cells(self) -> tuple[str, ...]:
        ordered = sorted(self.samples)
        p50 = percentile(ordered, 50) if ordered else float("nan")
        p99 = percentile(ordered, 99) if ordered else float("nan")
        verdict = ""
        if self.floor is not None and ordered:
            verdict = "ok" if p99 < self.floor else f"over {self.floor:.0f} ms"
        return (self.name, str(len(ordered)), f"{p50:.1f}", f"{p99:.1f}", verdict)


async def _timed(
    count: int, request: Callable[[int], Awaitable[httpx.Response]], warm_up: int = 20
) -> list[float]:
    for index in range(warm_up):
        (await request(index)).raise_for_status()
    samples = []
    for index in range(count):
        began = time.perf_counter()
        answer = await request(warm_up + index)
        samples.append(1000 * (time.perf_counter() - began))
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.request.url}: {answer.status_code} {answer.text[:300]}")
    return samples


async def _sign_in(client: httpx.AsyncClient) -> None:
    form = await client.get("/console/sign-in")
    answer = await client.post(
        "/console/sign-in",
        data={"name": OPERATOR, "password": PASSWORD, "csrf": csrf_of(form.text)},
    )
    if answer.status_code != 303:
        raise RuntimeError(f"cannot sign in: {answer.status_code} {answer.text[:300]}")


def _page_url(phone: str) -> str:
    return "/console/conversations/" + quote(phone, safe="")


async def measure_pages(client: httpx.AsyncClient, conversations: int, requests: int) -> list[Row]:
    rng = random.Random(7)
    phones = [workload.phone_number(rng.randrange(conversations)) for _ in range(requests + 40)]
    rows = [
        Row("baseline: GET /healthz", await _timed(requests, lambda _: client.get("/healthz"))),
        Row(
            "baseline: JSON API list, 50 rows",
            await _timed(
                requests,
                lambda _: client.get(
                    "/api/conversations?limit=50",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                ),
            ),
        ),
        Row(
            "conversation list, first page",
            await _timed(requests, lambda _: client.get("/console/conversations")),
            FLOOR_PAGE_P99_MS,
        ),
    ]
    # The next pages, by keyset, as an operator scrolling back would ask for them.
    next_urls: list[str] = []
    url: str | None = "/console/conversations"
    while url is not None and len(next_urls) < requests + 20:
        page = await client.get(url)
        marker = 'rel="next"'
        found = page.text.split(marker, 1)[0].rsplit('href="', 1) if marker in page.text else None
        url = found[1].split('"', 1)[0].replace("&amp;", "&") if found else None
        if url:
            next_urls.append(url)
    rows.append(
        Row(
            f"conversation list, next pages (to page {len(next_urls) + 1})",
            await _timed(len(next_urls) - 20, lambda i: client.get(next_urls[i])),
            FLOOR_PAGE_P99_MS,
        )
    )
    rows.append(
        Row(
            "conversation list, state=failed",
            await _timed(requests, lambda _: client.get("/console/conversations?state=failed")),
            FLOOR_PAGE_P99_MS,
        )
    )
    rows.append(
        Row(
            "conversation list, search by name",
            await _timed(
                requests,
                lambda i: client.get(f"/console/conversations?q={NAMES[i % len(NAMES)]}%20{i}"),
            ),
            FLOOR_PAGE_P99_MS,
        )
    )
    rows.append(
        Row(
            "one conversation",
            await _timed(requests, lambda i: client.get(_page_url(phones[i]))),
            FLOOR_PAGE_P99_MS,
        )
    )
    rows.append(
        Row(
            "overview",
            await _timed(requests, lambda _: client.get("/console")),
            FLOOR_PAGE_P99_MS,
        )
    )
    return rows


async def measure_live(
    url: str,
    cookies: httpx.Cookies,
    twilio: TwilioStandIn,
    conversations: int,
    *,
    watched: int,
    rate: float,
    seconds: float,
) -> tuple[list[Row], int]:
    """The live latency of messages to watched pages, at ``rate`` messages per second,
    beside its floor: the inbound webhook's own answer (recorded in the log), measured on
    every message of the same load."""
    rng = random.Random(11)
    pool = [workload.phone_number(i) for i in rng.sample(range(conversations), 10 * watched)]
    watched_phones = pool[:watched]
    pending: dict[str, float] = {}
    latencies: list[float] = []
    acknowledged: list[float] = []
    sent = 0
    sending_done = False
    all_seen = trio.Event()

    async def watch(phone: str, ready: trio.Event) -> None:
        async with event_stream(url, _page_url(phone) + "/live", cookies) as stream:
            await stream.until("retry: 2000")
            ready.set()
            while True:
                chunk = await stream.stream.receive_some(65536)
                if not chunk:
                    return
                stream.buffer += chunk
                text = stream.buffer.decode("utf-8", "replace")
                for needle, began in list(pending.items()):
                    if needle in text:
                        latencies.append(1000 * (time.perf_counter() - began))
                        del pending[needle]
                if sending_done and not pending:
                    all_seen.set()
                del stream.buffer[: max(0, len(stream.buffer) - 4096)]

    async def send(phone: str, index: int) -> None:
        nonlocal sent
        text = f"live check {index} for {phone}"
        began = time.perf_counter()
        if phone in watched_phones:
            pending[text] = began
        await twilio.user_says(phone, text, profile_name="Bench")
        acknowledged.append(1000 * (time.perf_counter() - began))
        sent += 1

    async with trio.open_nursery() as nursery:
        for phone in watched_phones:
            ready = trio.Event()
            nursery.start_soon(watch, phone, ready)
            await ready.wait()
        began = trio.current_time()
        async with trio.open_nursery() as senders:
            for index in range(int(rate * seconds)):
                await trio.sleep_until(began + index / rate)
                # One in ten to a watched page; the rest elsewhere.
                phone = (
                    watched_phones[index // 10 % watched] if index % 10 == 0 else rng.choice(pool)
                )
                senders.start_soon(send, phone, index)
        sending_done = True
        if not pending:
            all_seen.set()
        with trio.move_on_after(5):
            await all_seen.wait()
        nursery.cancel_scope.cancel()
    missed = len(pending)
    return [
        Row(f"baseline: inbound webhook answered, {rate:g} msg/s", acknowledged),
        Row(f"live update, {rate:g} msg/s ({sent} sent)", latencies, FLOOR_LIVE_P99_MS),
    ], missed


async def main(args: argparse.Namespace) -> None:
    events, dsn = await prepare(args.dsn, args.conversations, args.keep)
    async with open_postgres_store(dsn) as store, open_operator_store(store) as credentials:
        accounts = OperatorAccounts(store, credentials)
        if await accounts.exists(OPERATOR):
            await accounts.set_password(OPERATOR, PASSWORD, by="test")
        else:
            await accounts.add(OPERATOR, PASSWORD, by="test")
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    twilio = TwilioStandIn(webhook_concurrency=64)
    server_log: Any = subprocess.DEVNULL
    if args.server_log:
        server_log = await trio.to_thread.run_sync(Path(args.server_log).open, "w")
    elevenlabs = ElevenLabsStandIn()
    # The agent the seeded calls were with: the stand-in's own, under that id.
    elevenlabs.add_agent(attrs.evolve(elevenlabs.agent(DEFAULT_AGENT_ID), agent_id=SEEDED_AGENT))
    async with serve_elevenlabs(elevenlabs) as el, serve_twilio(twilio) as tw:
        tw.webhook_url = f"{public}/webhooks/twilio/whatsapp"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AFTERCALL_")},
            **stand_in_environment(el, tw, public),
            "DATABASE_URL": dsn,
            "AFTERCALL_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        server = await trio.to_thread.run_sync(
            partial(
                subprocess.Popen,
                hypercorn_command("web.app:app", port),
                env=env,
                cwd=ROOT,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=server_log,
            )
        )
        try:
            began = time.perf_counter()
            async with httpx.AsyncClient(base_url=public, timeout=60) as client:
                with trio.fail_after(600):
                    while True:
                        try:
                            if (await client.get("/readyz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await trio.sleep(0.5)
                ready_in = time.perf_counter() - began
                print(f"aftercall ready in {ready_in:.0f} s (it folds the log at start-up)")
                await _sign_in(client)
                rows = await measure_pages(client, args.conversations, args.requests)
                live, missed = await measure_live(
                    public,
                    client.cookies,
                    tw,
                    args.conversations,
                    watched=args.watched,
                    rate=args.rate,
                    seconds=args.seconds,
                )
                rows += live
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
    print(
        f"\n{args.conversations:,} conversations, {events:,} events in PostgreSQL; "
        f"{os.cpu_count()} cores; times in ms, one request at a time\n"
    )
    header = ("", "samples", "p50", "p99", "floor (p99)")
    widths = [max(len(r.cells()[i]) for r in rows) for i in range(5)]
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for cells in (header, *(r.cells() for r in rows)):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    if missed:
        print(f"\n{missed} watched messages never reached their page within 5 s of the last send")
    if not args.keep:
        _psql(args.dsn, f"DROP DATABASE IF EXISTS {BENCH_DB}")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="per page (200)")
    parser.add_argument("--rate", type=float, default=50.0, help="inbound messages/s (50)")
    parser.add_argument("--seconds", type=float, default=20.0, help="of live load (20)")
    parser.add_argument("--watched", type=int, default=20, help="open conversation pages (20)")
    parser.add_argument("--keep", action="store_true", help=f"keep (and reuse) {BENCH_DB}")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL") or BASE_DSN)
    parser.add_argument("--server-log", help="write aftercall's own log (stderr) here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse())
