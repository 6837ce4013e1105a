"""How fast aftercall answers WhatsApp messages, and what it adds to the agent's time.

Run by hand (never in the tests)::

    .venv/bin/python -m benchmarks.conversation [--conversations 50 500] [--seconds 20]
        [--status-callbacks] [--profile] [--dsn postgresql://postgres@127.0.0.1:5432/test]

What runs where:
- aftercall runs as production runs it, ``hypercorn -k trio web.app:app`` in its own process,
  on PostgreSQL (a fresh database, ``aftercall_bench``), with the default settings.
- This process runs the ElevenLabs and Twilio stand-ins (an agent that answers at once) and
  the load: N simulated WhatsApp users, each sending a message, waiting for the answer to
  reach their phone, and sending the next (closed loop), for a fixed time.

What is measured, from aftercall's own event log after the run:
- added latency: for each answer, (Twilio request started - inbound webhook received) -
  agent time. That is everything aftercall itself does: the webhook, the append, waking the
  actor, folding, the agent round trip's overhead, the reply intent, the Twilio call set-up.
- throughput: inbound messages answered per second over the measured window.
- where the added latency goes, per reply: webhook received -> the actor asks the agent
  (the inbound append, waking the actor), the turn's overhead (asked -> answered, minus
  agent time), and answered -> Twilio request started (the reply intent's append).
- exactly once: every MessageReceived is answered by exactly one reply that was sent; the
  stand-in's phones received as many messages as were answered; and no phone received one
  text twice (every question is unique and the stand-in's agent quotes it).

The server is stopped with SIGTERM right after the last answers reach the phones. Under
``-w 0`` Hypercorn installs no handler for it (a parent process does that with workers),
so that stop is a crash: a reply Twilio accepted in the last instant can be left without
its ``ReplySent`` ("without outcome" below; the phone has it, "at phones" counts it), which
the next start reconciles by looking it up in Twilio (tests/e2e/test_restart.py, where
the graceful stop of ``hypercorn -k trio`` with its worker is tested too).

With ``--think``, users wait a random 0.5-1.5x the think time, and start spread over one
think time: with one fixed pause they would move in lockstep, and every conversation's
message would arrive in the same instant, a burst no real set of people produces.

The Twilio stand-in delivers the users' webhooks over at most ``--webhook-connections``
(64) connections at once, with httpx's default transport, one client lent to each webhook
in flight (the stand-ins share no code with aftercall, so not its ``clients.http1``; a
single httpx pool rescans every pooled connection for every request). That costs this
process about 2.6x the CPU per webhook of the lean transport it used before
(``python -m benchmarks.standin_webhooks``). The stand-ins are served by their own small
server (`sandbox._standin_server`), not Hypercorn, and the Twilio stand-in's routes by a
small router, not Quart: this process's CPU is taken from the same cores aftercall
is measured on.

The CPU table says what each process spent per answered message; all three share the
machine's cores, so the cores divided by their sum is the ceiling of the closed loop
(printed beside it), with how busy the machine was.

The baseline is the machine's ceiling for the webhook alone, measured just before each
row (`benchmarks.bare_webhook`: the bare signed-webhook handler of
docs/stack.md, which noted ~1,570 requests/s on the machine the floors were set
on). Every message costs aftercall that handler's work, plus a Twilio request, a WebSocket
turn and three appends. These VMs' speed differs by up to twice between machines and
between minutes, so each row also says what it is as a share of the baseline measured
beside it, and what that share is on stack.md's machine: its messages per second scaled
by 1,570 / the baseline now.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from benchmarks._processes import (
    cpu_seconds,
    hypercorn_command,
    machine_times,
    postgres_cpu_seconds,
    served_pid,
    wait_until_answering,
)
from benchmarks.bare_webhook import NOTED_CEILING, Baseline, mean_baseline
from benchmarks.bare_webhook import describe as describe_baseline
from benchmarks.bare_webhook import measure as measure_baseline
from events.calls import CallCompleted, call_event_id
from events.codec import to_new_event
from events.conversation import phone_stream
from events.postgres import open_postgres_store
from events.store import RecordedEvent
from sandbox.elevenlabs import DEFAULT_AGENT_ID, ElevenLabsStandIn, serve_elevenlabs
from sandbox.environment import free_port, stand_in_environment
from sandbox.twilio import TwilioStandIn, serve_twilio

ROOT = Path(__file__).resolve().parents[1]
BASE_DSN = "postgresql://postgres@127.0.0.1:5432/test"
BENCH_DB = "aftercall_bench"


@attrs.define
class RunResult:
    conversations: int
    seconds: float
    sent: int
    answered: int
    added_ms: list[float]
    agent_ms: list[float]
    duplicates: int
    unanswered: int
    phones_received: int
    #: Replies by kind (agent, fallback, first_message...), fallbacks by reason, and
    #: intents with no outcome recorded when the server stopped: what explains a
    #: difference between "answered" and what reached the phones.
    replies_by_kind: dict[str, int] = attrs.Factory(dict)
    fallbacks_by_reason: dict[str, int] = attrs.Factory(dict)
    without_outcome: int = 0
    #: Messages that reached a phone with the same text as one it already had.
    repeated_at_phones: int = 0
    profile: str | None = None
    cpu_seconds: float = 0.0
    #: This process (the stand-ins and the simulated users) and PostgreSQL's processes.
    load_cpu_seconds: float = 0.0
    postgres_cpu_seconds: float = 0.0
    stages: dict[str, list[float]] = attrs.Factory(dict)
    #: The bare webhook handler's ceiling, measured just before this row.
    baseline: Baseline | None = None
    #: Share of the machine's CPU time in use over the window (all processes, /proc/stat).
    busy: float = 0.0

    def cpu_ms_per_message(self) -> tuple[float, float, float]:
        """aftercall, stand-ins and users, PostgreSQL."""
        n = max(self.answered, 1)
        return (
            1000 * self.cpu_seconds / n,
            1000 * self.load_cpu_seconds / n,
            1000 * self.postgres_cpu_seconds / n,
        )

    def cpu_ceiling(self) -> float:
        """Messages per second the machine's cores could carry at this CPU per message,
        every core busy: what the closed loop can reach at best."""
        total = sum(self.cpu_ms_per_message())
        return 1000 * (os.cpu_count() or 1) / total if total else float("nan")


def _psql(dsn: str, sql: str) -> None:
    subprocess.run(["psql", dsn, "-qAtc", sql], check=True, capture_output=True, timeout=120)


def _fresh_database(base_dsn: str) -> str:
    _psql(base_dsn, f"DROP DATABASE IF EXISTS {BENCH_DB}")
    _psql(base_dsn, f"CREATE DATABASE {BENCH_DB}")
    return base_dsn.rsplit("/", 1)[0] + "/" + BENCH_DB


async def run_once(
    conversations: int,
    seconds: float,
    dsn: str,
    callbacks: bool,
    profile: bool,
    think: float,
    connections: int,
) -> RunResult:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    twilio = TwilioStandIn(
        status_callbacks=callbacks, read_receipts=callbacks, webhook_concurrency=connections
    )
    async with serve_elevenlabs(ElevenLabsStandIn()) as el, serve_twilio(twilio) as tw:
        tw.webhook_url = f"{public}/webhooks/twilio/whatsapp"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AFTERCALL_")},
            **stand_in_environment(el, tw, public),
            "DATABASE_URL": dsn,
        }
        command = hypercorn_command("web.app:app", port)
        profile_path = Path(tempfile.mkdtemp()) / "profile.txt"
        if profile and shutil.which("py-spy"):
            command = ["py-spy", "record", "--format", "raw", "--rate", "200",
                       "-o", str(profile_path), "--", *command]  # fmt: skip
        phones = [f"+1555{7000000 + i:07d}" for i in range(conversations)]
        await _calls_completed(dsn, phones)
        server = await trio.to_thread.run_sync(
            partial(
                subprocess.Popen, command, env=env, cwd=ROOT, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        try:
            await wait_until_answering(f"{public}/readyz", lambda status: status == 200)
            # Warm-up: aftercall resumes the calls at start-up, sends each first message and
            # opens each agent session; the measurement starts once every phone has it.
            with trio.fail_after(120):
                for phone in phones:
                    await tw.wait_received(phone, 1)
            sent = 0
            deadline = trio.current_time() + seconds
            started = time.monotonic()
            served = served_pid(server.pid) if profile else server.pid
            cpu_before = cpu_seconds(served)
            load_before = time.process_time()
            postgres_before = postgres_cpu_seconds()
            machine_before = machine_times()

            pace = random.Random(conversations)

            async def user(phone: str) -> None:
                nonlocal sent
                i = 0
                if think:
                    await trio.sleep(pace.uniform(0, think))
                while trio.current_time() < deadline:
                    await tw.user_says(phone, f"question {i} from {phone}")
                    sent += 1
                    i += 1
                    with trio.move_on_after(30):
                        await tw.wait_received(phone, i + 1)  # the first message, then answers
                    if think:  # a person reads the answer, then types
                        await trio.sleep(think * pace.uniform(0.5, 1.5))

            async with trio.open_nursery() as nursery:
                for phone in phones:
                    nursery.start_soon(user, phone)
            elapsed = time.monotonic() - started
            cpu_used = cpu_seconds(served) - cpu_before
            load_used = time.process_time() - load_before
            postgres_used = postgres_cpu_seconds() - postgres_before
            machine_after = machine_times()
        finally:
            os.killpg(server.pid, signal.SIGINT if profile else signal.SIGTERM)
            server.wait(60)
        received = sum(len(tw.received(p)) for p in phones)
        # Every question is unique ("question i from +phone") and the stand-in's agent
        # quotes it, so one body twice at one phone is a message sent twice: exactly once
        # checked where the person is, not only in the log.
        repeated_at_phones = sum(
            count - 1
            for p in phones
            for count in Counter(m.body for m in tw.received(p)).values()
            if count > 1
        )
    result = await _analyse(dsn, conversations, elapsed, sent, received)
    result.repeated_at_phones = repeated_at_phones
    result.cpu_seconds = cpu_used
    result.load_cpu_seconds = load_used
    result.postgres_cpu_seconds = postgres_used
    total = sum(machine_after) - sum(machine_before)
    result.busy = 1 - (machine_after[3] - machine_before[3]) / total if total else 0.0
    if profile and profile_path.exists():
        result.profile = _top_frames(profile_path) + f"\n  (raw profile: {profile_path})"
    return result


async def _calls_completed(dsn: str, phones: list[str]) -> None:
    """What the post-call webhook would have recorded for each phone."""
    async with open_postgres_store(dsn) as store:
        for phone in phones:
            call = CallCompleted(
                f"conv_bench_{phone[1:]}", DEFAULT_AGENT_ID, phone,
                "Asked about the invoice; a refund was promised.",
                dynamic_variables={"user_name": "Bench"}, source="test",
            )  # fmt: skip
            await store.append(
                phone_stream(phone),
                [to_new_event(call, event_id=call_event_id(call.conversation_id))],
            )


async def _analyse(
    dsn: str, conversations: int, elapsed: float, sent: int, received: int
) -> RunResult:
    async with open_postgres_store(dsn) as store:
        events: list[RecordedEvent] = []
        position = 0
        while batch := await store.read_all(after=position, limit=10_000, category="phone"):
            events.extend(batch)
            position = batch[-1].position
    received_at: dict[str, datetime] = {}
    asked_at: dict[str, datetime] = {}
    answered_at: dict[str, datetime] = {}
    turns: dict[str, float] = {}
    replies: dict[str, Mapping[str, Any]] = {}
    sent_replies: dict[str, Mapping[str, Any]] = {}
    settled: set[str] = set()
    fallbacks: Counter[str] = Counter()
    answered_by: dict[str, int] = defaultdict(int)
    for event in events:
        data = event.data
        if event.type == "MessageReceived":
            received_at[data["message_sid"]] = datetime.fromisoformat(data["received_at"])
        elif event.type == "AgentAsked":
            asked_at[data["turn_id"]] = datetime.fromisoformat(data["asked_at"])
        elif event.type == "AgentAnswered":
            turns[data["turn_id"]] = data["agent_seconds"]
            answered_at[data["turn_id"]] = datetime.fromisoformat(data["answered_at"])
        elif event.type == "ReplyRequested":
            replies[data["reply_id"]] = data
            for sid in data["in_reply_to"]:
                answered_by[sid] += 1
        elif event.type == "ReplySent" and data["part"] == 0:
            sent_replies[data["reply_id"]] = data
            settled.add(data["reply_id"])
        elif event.type == "ReplyFailed" and data["part"] == 0:
            settled.add(data["reply_id"])
        elif event.type == "AgentTurnFailed":
            fallbacks[data["reason"]] += 1
    added: list[float] = []
    agent: list[float] = []
    stages: dict[str, list[float]] = {"to actor": [], "turn": [], "to send": []}
    for reply_id, outcome in sent_replies.items():
        request = replies[reply_id]
        if request["kind"] != "agent" or not outcome.get("send_started_at"):
            continue
        inbound = max(received_at[sid] for sid in request["in_reply_to"])
        agent_s = turns.get(request["turn_id"], 0.0)
        start = datetime.fromisoformat(outcome["send_started_at"])
        added.append(((start - inbound).total_seconds() - agent_s) * 1000)
        agent.append(agent_s * 1000)
        turn = request["turn_id"]
        if turn in asked_at and turn in answered_at:
            asked, replied = asked_at[turn], answered_at[turn]
            stages["to actor"].append((asked - inbound).total_seconds() * 1000)
            stages["turn"].append(((replied - asked).total_seconds() - agent_s) * 1000)
            stages["to send"].append((start - replied).total_seconds() * 1000)
    unanswered = sum(1 for sid in received_at if answered_by.get(sid, 0) == 0)
    duplicates = sum(1 for count in answered_by.values() if count > 1)
    answered = sum(
        1
        for reply_id, request in replies.items()
        if request["kind"] == "agent" and reply_id in sent_replies
    )
    by_kind = Counter(request["kind"] for request in replies.values())
    return RunResult(
        conversations, elapsed, sent, answered, added, agent, duplicates, unanswered,
        received - by_kind["first_message"], stages=stages, replies_by_kind=dict(by_kind),
        fallbacks_by_reason=dict(fallbacks), without_outcome=len(replies.keys() - settled),
    )  # fmt: skip


def _top_frames(path: Path, top: int = 15) -> str:
    """Self time by function, and inclusive time of aftercall's own functions, from
    py-spy's raw (collapsed stack) output."""
    own: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    total = 0
    # py-spy names a frame "function (path:line)", the path relative to sys.path.
    project = ("(actors/", "(events/", "(web/", "(aftercall/", "(projections/")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        own[frames[-1]] += int(count)
        for frame in set(frames):
            if any(part in frame for part in project):
                inclusive[frame] += int(count)
        total += int(count)
    rows = sorted(own.items(), key=lambda item: -item[1])[:top]
    lines = ["  self time:"] + [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in rows]
    rows = sorted(inclusive.items(), key=lambda item: -item[1])[:top]
    lines += ["  inclusive time of aftercall's functions:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in rows]
    return "\n".join(lines)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--dsn", default=BASE_DSN, help="any database on the server to use")
    parser.add_argument("--status-callbacks", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the aftercall process")
    parser.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="seconds each user waits after an answer before writing again (0: closed loop)",
    )
    parser.add_argument(
        "--webhook-connections",
        type=int,
        default=64,
        help="webhooks the Twilio stand-in has in flight at once (its connections to aftercall)",
    )
    args = parser.parse_args()
    results = []
    for n in args.conversations:
        before = trio.run(measure_baseline)
        dsn = _fresh_database(args.dsn)
        result = trio.run(
            run_once,
            n,
            args.seconds,
            dsn,
            args.status_callbacks,
            args.profile,
            args.think,
            args.webhook_connections,
        )
        result.baseline = mean_baseline(before, trio.run(measure_baseline))
        results.append(result)
    print(
        f"\naftercall conversation benchmark (PostgreSQL, status callbacks "
        f"{'on' if args.status_callbacks else 'off'}, {args.seconds:g} s per row, "
        f"think time {args.think:g} s, {args.webhook_connections} webhook connections)"
    )
    for r in results:
        if r.baseline is not None:
            print(f"baseline around the {r.conversations}-conversation row: "
                  f"{describe_baseline(r.baseline)}")  # fmt: skip
    header = (
        f"{'conversations':>13} {'msgs/s':>8} {'answered':>9} {'added p50':>10} "
        f"{'added p99':>10} {'agent p50':>10} {'dup':>4} {'lost':>5} {'at phones':>9} "
        f"{'CPU/msg':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.conversations:>13} {r.answered / r.seconds:>8.0f} {r.answered:>9} "
              f"{_pct(r.added_ms, 0.5):>8.1f}ms {_pct(r.added_ms, 0.99):>8.1f}ms "
              f"{_pct(r.agent_ms, 0.5):>8.1f}ms {r.duplicates:>4} {r.unanswered:>5} "
              f"{r.phones_received:>9} "
            f"{1000 * r.cpu_seconds / max(r.answered, 1):>6.2f}ms")  # fmt: skip
    print("\nreplies requested by kind (at phones counts every reply but the first messages), "
          "turns that fell back, and\nintents with no outcome when the server stopped "
          "(recovered from Twilio at the next start):")  # fmt: skip
    for r in results:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(r.replies_by_kind.items()))
        reasons = ", ".join(f"{why} {n}" for why, n in sorted(r.fallbacks_by_reason.items()))
        print(f"{r.conversations:>13}  {kinds}; fallbacks: {reasons or 'none'}; "
              f"without outcome: {r.without_outcome}; "
              f"the same text twice at a phone: {r.repeated_at_phones}")  # fmt: skip
    print("\nmessages per second against the baseline (the webhook handler alone, measured "
          "just before and\njust after each row, the mean), and scaled to stack.md's "
          "machine (x 1,570 / that baseline):")  # fmt: skip
    for r in results:
        if r.baseline is None:
            continue
        rate = r.answered / r.seconds
        ratio = rate / r.baseline.requests_per_second
        print(f"{r.conversations:>13}  {rate:.0f} msg/s = {100 * ratio:.1f}% of "
              f"{r.baseline.requests_per_second:,.0f} req/s  ->  {ratio * NOTED_CEILING:.0f} "
              f"msg/s on stack.md's machine")  # fmt: skip
    print(f"\nCPU per answered message, by process ({os.cpu_count()} cores shared), and the "
          "ceiling those cores set at that CPU:")  # fmt: skip
    for r in results:
        ours, load, postgres = r.cpu_ms_per_message()
        print(f"{r.conversations:>13}  aftercall {ours:.2f} ms  "
              f"stand-ins and users {load:.2f} ms  PostgreSQL {postgres:.2f} ms  "
              f"-> ceiling {r.cpu_ceiling():.0f} msg/s; "
              f"machine {100 * r.busy:.0f}% busy")  # fmt: skip
    print("\nadded latency by stage, p50 / p99 (webhook -> actor asks; turn overhead; "
          "answered -> Twilio request):")  # fmt: skip
    for r in results:
        shown = "  ".join(
            f"{name} {_pct(v, 0.5):.1f} / {_pct(v, 0.99):.1f} ms" for name, v in r.stages.items()
        )
        print(f"{r.conversations:>13}  {shown}")
    for r in results:
        if r.profile:
            print(
                f"\nwhere aftercall's CPU goes ({r.conversations} conversations, py-spy self time):"
            )
            print(r.profile)


if __name__ == "__main__":
    main()
