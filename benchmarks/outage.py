"""What a PostgreSQL outage under load costs aftercall: messages lost and duplicated, the
slowest webhook answer, and how long /readyz said not ready.

Run by hand (never in the tests)::

    .venv/bin/python -m benchmarks.outage [--rate 30] [--outage 10] [--before 10] [--after 20]
        [--phones 50] [--drain 60] [--status-callbacks]

What runs where:
- PostgreSQL is a throwaway cluster of this run's own (`benchmarks._processes`), on a free
  port: the benchmark stops and starts it, so it must never be the machine's shared server.
- aftercall runs as production runs it, ``hypercorn -k trio web.app:app`` in its own process,
  with the default settings and ``DATABASE_URL`` on that cluster (a fresh database per row).
- This process runs the ElevenLabs and Twilio stand-ins (an agent that answers at once,
  quoting the message) and the load: ``--rate`` inbound WhatsApp messages per second, open
  loop (each sent at its time, whatever happened to the ones before, as people write), round
  robin over ``--phones`` conversations whose call has completed.

Two rows, in one run: a baseline (the same load for the same total time, PostgreSQL up
throughout), then the outage: after ``--before`` seconds the cluster is stopped
(``pg_ctl stop -m fast``), ``--outage`` seconds later started again, and the load goes on for
``--after`` seconds. Then the load stops and the run waits (at most ``--drain`` seconds) until
every message is answered, or until every acknowledged one is and nothing has reached a phone
for a while.

How it is counted, where the person is: every message has its own number (``m000123``) and
the stand-in's agent quotes what it is asked (messages that arrived during a turn are
coalesced into one reply, which quotes them all), so each message's answers are counted at
its phone exactly: answered once, never (lost), or more than once (duplicated). A reply that
quotes nothing (the fallback text, when the agent could not answer) is counted apart. The
stand-in's delivery records give each webhook's status; this process times each one.

What Twilio does with a refused webhook (docs/reference/twilio-whatsapp.md §1.4): it retries
only what its retry policy names, and the default policy is ``rp=ct`` with ``rc=1``: one
retry after a failed *connection*, nothing after an HTTP error status or a read timeout
(11205 after 15 s). So an inbound message answered 503, or not answered within 15 s, is
never delivered again: the 503 keeps invariant 1 (nothing acknowledged that is not in the
log), but the person's message is gone for aftercall, and the table counts it as lost, with
the reason (a webhook URL with ``#rp=5xx`` would make Twilio retry; this benchmark uses the
default, as the README's set-up does). The stand-in plays the same policy: it retries a
failed connection once and nothing else, and gives up after 15 s.

/readyz is probed every 100 ms, each probe in its own task (a probe answers after up to 2 s
while the log does not answer; probing one after the other would blur the intervals). What
/readyz said is taken when it said it, at each answer's arrival (a probe sent while the log
was away can come back 200 if the log returned within its 2 s): a not-ready interval runs
from the first answer that was not 200 to the next answer that was. An answer that arrives
after the answer to a later probe is stale and ignored (a probe sent just before the log
returned can time out into a 503 after a later one already said 200: a load balancer that
probes one at a time never sees that). A probe that times out or finds no server counts as
not ready, as a load balancer's would.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from pathlib import Path

import attrs
import httpx
import trio

from benchmarks._processes import (
    ThrowawayPostgres,
    hypercorn_command,
    throwaway_postgres,
    wait_until_answering,
)
from benchmarks.conversation import _calls_completed
from events.postgres import open_postgres_store
from sandbox.elevenlabs import ElevenLabsStandIn, serve_elevenlabs
from sandbox.environment import free_port, stand_in_environment
from sandbox.twilio import Delivery, TwilioStandIn, serve_twilio

ROOT = Path(__file__).resolve().parents[1]
#: Seconds between /readyz probes, and how long one probe may take (a load balancer's
#: probe timeout is of this order; /readyz itself gives each dependency 2 s).
PROBE_EVERY = 0.1
PROBE_TIMEOUT = 5.0
#: Twilio's own limit is the 15 s answer deadline, not a number of webhooks in flight: the
#: stand-in's limiter (there to spare its CPU in the closed-loop benchmark) must not queue
#: webhooks here, or their times would include the wait for a slot.
WEBHOOK_CONCURRENCY = 100_000
#: The drain ends early when every acknowledged message is answered and no reply has reached
#: a phone for this long: what is still unanswered then was refused, and will stay so.
QUIET_SECONDS = 5.0
#: A message's number as its text carries it, and the agent's quote of it.
NUMBER = re.compile(r"\bm(\d{6})\b")


def _text(index: int) -> str:
    # None of the stand-in agent's trigger words ("summary", "my name"...): it quotes it.
    return f"message m{index:06d}, please confirm"


@attrs.frozen
class Load:
    """What a row runs: the messages per second, over how many conversations, the seconds
    of load before and after the outage (or around nothing, for the baseline), and the
    longest wait for the last answers."""

    rate: float
    phones: int
    before: float
    after: float
    drain: float
    status_callbacks: bool


@attrs.define
class Sent:
    """One inbound message: when its webhook went out (seconds from the load's start), and
    how long the webhook took to be answered (None: still in flight)."""

    index: int
    phone: str
    at: float
    seconds: float | None = None
    sid: str | None = None


@attrs.frozen
class Probe:
    """One /readyz probe: when it was sent, its status (None: no answer), how long it took."""

    at: float
    status: int | None
    seconds: float

    @property
    def answered_at(self) -> float:
        return self.at + self.seconds


@attrs.define
class Tally:
    """What reached the phones: answers per message number, when each was first answered
    (seconds from the load's start), and replies that quote no message."""

    answers: Counter[int] = attrs.Factory(Counter)
    first_answered: dict[int, float] = attrs.Factory(dict)
    unquoted: int = 0
    #: When each reply (first messages aside) reached its phone, oldest first.
    reply_times: list[float] = attrs.Factory(list)


@attrs.define
class Run:
    label: str
    seconds: float
    sent: list[Sent]
    probes: list[Probe]
    deliveries: dict[str, Delivery]
    tally: Tally
    #: PostgreSQL down: from the stop's request to the start's return (None: no outage).
    postgres_down: tuple[float, float] | None
    drain_seconds: float
    #: aftercall's exit code if it ended by itself during the run (None: it kept serving).
    server_died: int | None
    server_log: Path
    #: Twilio's deadline for a webhook answer (after it: 11205, and no retry).
    webhook_timeout: float
    #: From aftercall's event log, read after the run: inbound messages recorded, replies
    #: requested by kind, and messages recorded although their webhook was answered 503.
    recorded: int = 0
    replies_by_kind: dict[str, int] = attrs.Factory(dict)
    recorded_but_refused: int = 0


# --------------------------------------------------------------------------------- the run


async def run_once(
    cluster: ThrowawayPostgres, database: str, load: Load, outage: float | None
) -> Run:
    """One row: the load for ``before + outage + after`` seconds, PostgreSQL stopped for
    ``outage`` of them (None: never stopped), then the drain."""
    total = load.before + (outage or 0.0) + load.after
    dsn = await trio.to_thread.run_sync(cluster.create_database, database)
    phones = [f"+1555{8000000 + i:07d}" for i in range(load.phones)]
    await _calls_completed(dsn, phones)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    twilio = TwilioStandIn(
        status_callbacks=load.status_callbacks,
        read_receipts=load.status_callbacks,
        webhook_concurrency=WEBHOOK_CONCURRENCY,
    )
    log_path = Path(tempfile.mkdtemp(prefix="aftercall-outage-")) / f"{database}.log"
    sent: list[Sent] = []
    probes: list[Probe] = []
    down: tuple[float, float] | None = None
    async with serve_elevenlabs(ElevenLabsStandIn()) as el, serve_twilio(twilio) as tw:
        tw.webhook_url = f"{public}/webhooks/twilio/whatsapp"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AFTERCALL_")},
            **stand_in_environment(el, tw, public),
            "DATABASE_URL": dsn,
        }
        with log_path.open("wb") as log:
            server = await trio.to_thread.run_sync(
                partial(
                    subprocess.Popen, hypercorn_command("web.app:app", port), env=env,
                    cwd=ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        try:
            await wait_until_answering(f"{public}/readyz", lambda status: status == 200)
            # aftercall resumes the completed calls at start-up and sends each first
            # message; the load starts once every phone has it, so only the load is measured.
            with trio.fail_after(120):
                for phone in phones:
                    await tw.wait_received(phone, 1)
            start = trio.current_time()
            wall_start = tw.clock.wall()
            async with trio.open_nursery() as watchers:
                watchers.start_soon(_poll_readyz, f"{public}/readyz", start, probes)
                if outage is not None:

                    async def stop_and_start() -> None:
                        nonlocal down
                        await trio.sleep_until(start + load.before)
                        stopped = trio.current_time()
                        await trio.to_thread.run_sync(cluster.stop)
                        # Down for ``outage`` seconds from the stop's request: pg_ctl -w
                        # polls, so its return comes up to a second after the server ended.
                        await trio.sleep_until(stopped + outage)
                        await trio.to_thread.run_sync(cluster.start)
                        down = (stopped - start, trio.current_time() - start)

                    watchers.start_soon(stop_and_start)
                await _drive(tw, phones, load.rate, total, start, sent)
                drain_started = trio.current_time()
                await _drain(tw, phones, sent, load.drain, wall_start)
                drain_seconds = trio.current_time() - drain_started
                watchers.cancel_scope.cancel()
            server_died = server.poll()
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            await trio.to_thread.run_sync(server.wait, 60)
        tally = _tally(tw, phones, wall_start)
        deliveries = {d.message_sid: d for d in tw.deliveries if d.kind == "inbound"}
    run = Run(
        "baseline" if outage is None else "outage", total, sent, probes, deliveries, tally,
        down, drain_seconds, server_died, log_path, twilio.webhook_timeout,
    )  # fmt: skip
    await _read_log(dsn, run)
    return run


async def _drive(
    tw: TwilioStandIn, phones: Sequence[str], rate: float, seconds: float, start: float,
    sent: list[Sent],
) -> None:  # fmt: skip
    """Open loop: message k goes out at ``start + k / rate`` in its own task, so a webhook
    that hangs delays no other; returns once every webhook has been answered (or not)."""

    async def send(message: Sent) -> None:
        began = trio.current_time()
        message.sid = await tw.user_says(message.phone, _text(message.index))
        message.seconds = trio.current_time() - began

    async with trio.open_nursery() as nursery:
        index = 0
        while (due := index / rate) < seconds:
            await trio.sleep_until(start + due)
            message = Sent(index, phones[index % len(phones)], trio.current_time() - start)
            sent.append(message)
            nursery.start_soon(send, message)
            index += 1


async def _drain(
    tw: TwilioStandIn, phones: Sequence[str], sent: Sequence[Sent], limit: float,
    wall_start: datetime,
) -> None:  # fmt: skip
    """Until every message is answered; or every message whose webhook was acknowledged
    (2xx) is, and no reply has reached a phone for `QUIET_SECONDS`; at most ``limit`` s.

    Polled: the stand-in wakes a waiter per phone, not per message number.
    """
    answers = {d.message_sid: d.status_code for d in tw.deliveries if d.kind == "inbound"}
    acknowledged = {m.index for m in sent if _ok(answers.get(m.sid or ""))}
    quiet_since = trio.current_time()
    replies = -1
    with trio.move_on_after(limit):
        while True:
            tally = _tally(tw, phones, wall_start)
            answered = set(tally.answers)
            if len(answered) == len(sent):
                return
            if len(tally.reply_times) != replies:
                replies, quiet_since = len(tally.reply_times), trio.current_time()
            elif acknowledged <= answered and trio.current_time() - quiet_since > QUIET_SECONDS:
                return
            await trio.sleep(0.2)


def _ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


async def _poll_readyz(url: str, start: float, probes: list[Probe]) -> None:
    """A probe every `PROBE_EVERY` seconds, each in its own task, until cancelled."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
    async with (
        httpx.AsyncClient(timeout=PROBE_TIMEOUT, limits=limits) as http,
        trio.open_nursery() as nursery,
    ):

        async def probe(at: float) -> None:
            status: int | None
            try:
                status = (await http.get(url)).status_code
            except httpx.TransportError:  # refused, reset, or timed out: not ready
                status = None
            probes.append(Probe(at, status, trio.current_time() - start - at))

        tick = 0
        while True:
            await trio.sleep_until(start + tick * PROBE_EVERY)
            nursery.start_soon(probe, tick * PROBE_EVERY)
            tick += 1


def _tally(tw: TwilioStandIn, phones: Sequence[str], wall_start: datetime) -> Tally:
    """Count, at each phone, the answers quoting each message number."""
    tally = Tally()
    for phone in phones:
        for record in tw.received(phone)[1:]:  # the first is the call's first message
            at = (record.date_created - wall_start).total_seconds()
            tally.reply_times.append(at)
            numbers = {int(n) for n in NUMBER.findall(record.body)}
            if not numbers:
                tally.unquoted += 1
            for number in numbers:
                tally.answers[number] += 1
                tally.first_answered.setdefault(number, at)
    tally.reply_times.sort()
    return tally


async def _read_log(dsn: str, run: Run) -> None:
    """aftercall's own account: what it recorded and which replies it asked for."""
    refused = {sid for sid, d in run.deliveries.items() if d.status_code == 503}
    kinds: Counter[str] = Counter()
    async with open_postgres_store(dsn) as store:
        position = 0
        while batch := await store.read_all(after=position, limit=10_000, category="phone"):
            for event in batch:
                if event.type == "MessageReceived":
                    run.recorded += 1
                    run.recorded_but_refused += event.data["message_sid"] in refused
                elif event.type == "ReplyRequested":
                    kinds[event.data["kind"]] += 1
            position = batch[-1].position
    run.replies_by_kind = dict(kinds)


# ------------------------------------------------------------------------------ the report


def not_ready_intervals(probes: Sequence[Probe]) -> list[tuple[float, float, bool]]:
    """(start, duration, ended) of each run of answers other than 200, in the order they
    arrived; one not ended was still not ready at the last answer (its duration runs to it)."""
    intervals: list[tuple[float, float, bool]] = []
    began: float | None = None
    ordered = sorted(probes, key=lambda p: p.answered_at)
    latest_sent = -math.inf
    for probe in ordered:
        if probe.at < latest_sent:  # stale: a probe sent later has already answered
            continue
        latest_sent = probe.at
        if probe.status != 200 and began is None:
            began = probe.answered_at
        elif probe.status == 200 and began is not None:
            intervals.append((began, probe.answered_at - began, True))
            began = None
    if began is not None:
        intervals.append((began, ordered[-1].answered_at - began, False))
    return intervals


def _window(times: Sequence[float], verb: str = "sent") -> str:
    """When those things happened, if any did."""
    if not times:
        return ""
    first, last = min(times), max(times)
    span = f"+{first:.2f}s" if last - first < 0.05 else f"+{first:.1f}s to +{last:.1f}s"
    return f" ({verb} {span})"


def _most_at_once(spans: Sequence[tuple[float, float]]) -> int:
    """The most (start, end) spans open at one instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = open_now = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rows(run: Run) -> list[tuple[str, str]]:
    """The table's rows for one run, as (label, value)."""
    counts = [run.tally.answers.get(m.index, 0) for m in run.sent]
    statuses = [
        run.deliveries[m.sid].status_code if m.sid in run.deliveries else None for m in run.sent
    ]
    ok = sum(1 for s in statuses if _ok(s))
    refused_at = [m.at for m, s in zip(run.sent, statuses, strict=True) if s == 503]
    refused = len(refused_at)
    other = sum(1 for s in statuses if s is not None and not _ok(s) and s != 503)
    # No status: Twilio got no answer; past its deadline it was a timeout (11205), before it
    # the connection could not be made (twice, as Twilio tries).
    unanswered = [m for m, s in zip(run.sent, statuses, strict=True) if s is None]
    timed_out_at = [m.at for m in unanswered if (m.seconds or 0.0) >= run.webhook_timeout]
    timed_out = len(timed_out_at)
    lost = [(m, s) for m, s, n in zip(run.sent, statuses, counts, strict=True) if n == 0]
    lost_refused = sum(1 for _, s in lost if s == 503)
    lost_acknowledged = sum(1 for _, s in lost if _ok(s))
    lost_timed_out = sum(
        1 for m, s in lost if s is None and (m.seconds or 0.0) >= run.webhook_timeout
    )
    webhook_ms = [1000 * m.seconds for m in run.sent if m.seconds is not None]
    answer_s = [
        run.tally.first_answered[m.index] - m.at
        for m in run.sent
        if m.index in run.tally.first_answered
    ]
    intervals = not_ready_intervals(run.probes)
    shown = ", ".join(
        f"+{began:.1f}s for {length:.1f}s{'' if ended else ' (still at the end)'}"
        for began, length, ended in intervals
    )
    total_not_ready = sum(length for _, length, _ in intervals)
    rows = [
        ("messages sent", f"{len(run.sent)} ({len(run.sent) / run.seconds:.1f}/s)"),
        ("answered exactly once", str(sum(1 for n in counts if n == 1))),
        ("lost (never answered)", str(len(lost))),
        ("  of which refused 503 (never redelivered)", str(lost_refused)),
        ("  of which timed out (never redelivered)", str(lost_timed_out)),
        ("  of which acknowledged 2xx", str(lost_acknowledged)),
        ("duplicated (answered more than once)", str(sum(1 for n in counts if n > 1))),
        ("replies quoting no message (fallbacks)", str(run.tally.unquoted)),
        ("webhooks answered 2xx", str(ok)),
        ("webhooks answered 503", str(refused) + _window(refused_at)),
        ("webhooks answered other status", str(other)),
        (
            f"webhooks timed out (>= {run.webhook_timeout:g} s)",
            str(timed_out) + _window(timed_out_at),
        ),
        ("webhooks failing to connect", str(len(unanswered) - timed_out)),
        ("slowest webhook answer", f"{max(webhook_ms, default=math.nan):.0f} ms"),
        (
            "webhooks in flight at once (most)",
            str(_most_at_once([(m.at, m.at + m.seconds) for m in run.sent if m.seconds])),
        ),
        (
            "webhook answer p99 / p50",
            f"{_pct(webhook_ms, 0.99):.0f} / {_pct(webhook_ms, 0.5):.0f} ms",
        ),
        (
            "message -> answer at phone p50 / p99 / max",
            f"{_pct(answer_s, 0.5):.2f} / {_pct(answer_s, 0.99):.2f} / "
            f"{max(answer_s, default=math.nan):.2f} s",
        ),
        ("/readyz not ready (start, duration)", shown or "never"),
        ("/readyz not ready in total", f"{total_not_ready:.1f} s"),
        (
            "/readyz probes (slowest answer)",
            f"{len(run.probes)} ({1000 * max((p.seconds for p in run.probes), default=0):.0f} ms)",
        ),
    ]
    outage_rows = [
        "PostgreSQL down",
        "replies reaching phones while it was down",
        "PostgreSQL back -> first reply at a phone",
        "PostgreSQL back -> first webhook 2xx",
    ]
    if run.postgres_down is None:
        rows += [(label, "-") for label in outage_rows]
    else:
        stopped, back = run.postgres_down
        after_back = [t for t in run.tally.reply_times if t >= back]
        acked_after = [
            m.at + (m.seconds or 0.0)
            for m, s in zip(run.sent, statuses, strict=True)
            if _ok(s) and m.at + (m.seconds or 0.0) >= back
        ]
        # A reply whose intent was recorded before the stop can still be sent in its first
        # instant; when they went out says which those are.
        during = [t for t in run.tally.reply_times if stopped <= t < back]
        values = [
            f"+{stopped:.1f}s to +{back:.1f}s ({back - stopped:.1f} s)",
            f"{len(during)}{_window(during, 'at')}",
            f"{1000 * (after_back[0] - back):.0f} ms" if after_back else "none",
            f"{1000 * (min(acked_after) - back):.0f} ms" if acked_after else "none",
        ]
        rows += list(zip(outage_rows, values, strict=True))
    rows += [
        ("drain after the load (waited)", f"{run.drain_seconds:.1f} s"),
        ("aftercall's log: inbound recorded", str(run.recorded)),
        ("  recorded although answered 503", str(run.recorded_but_refused)),
        (
            "  replies requested by kind",
            ", ".join(f"{k} {n}" for k, n in sorted(run.replies_by_kind.items())) or "none",
        ),
        (
            "aftercall process",
            "kept serving"
            if run.server_died is None
            else f"EXITED with {run.server_died} (log: {run.server_log})",
        ),
    ]
    return rows


def report(runs: Sequence[Run], args: argparse.Namespace) -> str:
    tables = [_rows(run) for run in runs]
    width = max(len(label) for label, _ in tables[0])
    columns = [
        max(len(run.label), *(len(v) for _, v in t)) for run, t in zip(runs, tables, strict=True)
    ]
    lines = [
        f"\naftercall under a PostgreSQL outage: {args.rate:g} inbound messages/s over "
        f"{args.phones} conversations, open loop; {args.before:g} s, then PostgreSQL stopped "
        f"(pg_ctl stop -m fast) for {args.outage:g} s, then {args.after:g} s; the baseline "
        f"runs the same load as long with PostgreSQL up. Times are from the load's start.",
        f"{'':<{width}}  "
        + "  ".join(f"{r.label:<{c}}" for r, c in zip(runs, columns, strict=True)),
    ]
    lines.append("-" * len(lines[-1]))
    for i, (label, _) in enumerate(tables[0]):
        values = "  ".join(f"{t[i][1]:<{c}}" for t, c in zip(tables, columns, strict=True))
        lines.append(f"{label:<{width}}  {values}".rstrip())
    lines.append(
        "\nA 503 or a timeout acknowledges nothing (invariant 1), but Twilio's default retry "
        "policy (rp=ct, docs/reference/twilio-whatsapp.md §1.4)\ndelivers neither again: "
        "those messages are lost for the person, and counted as lost above.\naftercall's "
        f"logs: {', '.join(str(r.server_log) for r in runs)}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=30.0, help="inbound messages per second")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds PostgreSQL is down")
    parser.add_argument("--before", type=float, default=10.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=20.0, help="seconds of load after")
    parser.add_argument("--phones", type=int, default=50, help="conversations the load uses")
    parser.add_argument(
        "--drain", type=float, default=60.0, help="at most this long for the last answers"
    )
    parser.add_argument(
        "--status-callbacks",
        action="store_true",
        help="the stand-in posts delivery status callbacks too (more webhooks, more appends)",
    )
    args = parser.parse_args()
    load = Load(args.rate, args.phones, args.before, args.after, args.drain, args.status_callbacks)
    with throwaway_postgres() as cluster:
        print(f"throwaway PostgreSQL on port {cluster.port} ({cluster.root})", flush=True)
        # The baseline first, on its own database: the same load, PostgreSQL up throughout.
        baseline = trio.run(run_once, cluster, "outage_baseline", load, None)
        print("baseline done; now the outage", flush=True)
        outage = trio.run(run_once, cluster, "outage_run", load, args.outage)
    print(report([baseline, outage], args))


if __name__ == "__main__":
    main()
