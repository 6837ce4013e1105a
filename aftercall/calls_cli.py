"""``aftercall batch``, ``aftercall call`` and ``aftercall agent``: the seed's call scripts.

- ``batch process BATCH_ID``: look at one batch now and record every call that ended, as
  the monitor would (idempotent: run it twice, the second run finds everything recorded),
  then wait for the WhatsApp follow-ups it started and say how each went. It runs the whole
  system (phone actors included) in this process, with the monitor off.
- ``batch latest``: the agent's most recent batch, each recipient's call as ElevenLabs
  reports it and its follow-up as the log records it. Reads only.
- ``call PHONE``: place one call through ElevenLabs' Twilio outbound-call API, for a full
  manual test; the post-call webhook starts the follow-up when the call ends.
- ``agent chat``: a text chat with the agent over the same WebSocket client the phone actor
  uses, printing every protocol event (the seed's WebSocket debug tool).

The commands read the same environment variables as the service; only ``batch process``
needs the Twilio ones. Failures are one line (``aftercall: ...``), without secrets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TextIO

import attrs
import httpx
import trio

from aftercall.commands import CommandError, run_async
from aftercall.settings import DEFAULT_ELEVENLABS_BASE_URL, SettingsError
from aftercall.storage import open_store, store_location
from aftercall.system import open_system
from clients.elevenlabs import protocol as proto
from clients.elevenlabs.api import BatchDetail, ElevenLabsAPI, ElevenLabsError
from clients.elevenlabs.session import AgentSession, AgentSessionConfig, AgentSessionError
from events.calls import CallCompleted, CallFailed
from events.codec import UnknownEventType, decode
from events.conversation import (
    DeliveryStatusChanged,
    MessageReceived,
    ReplyFailed,
    ReplyRequested,
    ReplySent,
    delivery_stream,
    phone_stream,
)
from events.phones import InvalidPhone, normalise_phone
from events.store import EventStore, EventStoreError
from followup.call_monitor import (
    BatchReport,
    BatchWork,
    RecipientReport,
    load_progress,
    process_batch,
)
from followup.call_rules import BatchProgress, recipient_phone

Out = Callable[[str], None]


def register(subparsers: Any) -> None:
    batch = subparsers.add_parser(
        "batch", help="ElevenLabs batch calls: process one, show the latest"
    )
    actions = batch.add_subparsers(dest="batch_command", metavar="ACTION")
    actions.required = True
    process = actions.add_parser(
        "process", help="record the finished calls of one batch now and start their follow-ups"
    )
    process.add_argument("batch_id", help="the batch id, e.g. btcal_...")
    process.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the first WhatsApp messages (default 60)",
    )
    process.set_defaults(handler=_process)
    latest = actions.add_parser(
        "latest", help="the most recent batch: each recipient's call and follow-up"
    )
    latest.add_argument("--agent", help="agent id (default: DEFAULT_AGENT_ID)")
    latest.set_defaults(handler=_latest)

    call = subparsers.add_parser(
        "call", help="place one outbound call through ElevenLabs' Twilio integration"
    )
    call.add_argument("phone", help="the number to call, E.164 (+15551234567)")
    call.add_argument("--agent", help="agent id (default: DEFAULT_AGENT_ID)")
    call.add_argument(
        "--phone-number-id",
        help="the agent's phone number id at ElevenLabs "
        "(default: ELEVENLABS_AGENT_PHONE_NUMBER_ID)",
    )
    call.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a dynamic variable for the call (repeatable)",
    )
    call.set_defaults(handler=_call)

    agent = subparsers.add_parser("agent", help="talk to the ElevenLabs agent")
    agent_actions = agent.add_subparsers(dest="agent_command", metavar="ACTION")
    agent_actions.required = True
    chat = agent_actions.add_parser(
        "chat", help="a text chat over the agent WebSocket, printing every protocol event"
    )
    chat.add_argument("--agent", help="agent id (default: DEFAULT_AGENT_ID)")
    chat.add_argument("--user", default="aftercall-cli", help="user_id sent to the agent")
    chat.add_argument(
        "--var", action="append", default=[], metavar="NAME=VALUE", help="a dynamic variable"
    )
    chat.add_argument(
        "--turn-timeout", type=float, default=30.0, metavar="SECONDS", help="wait per answer"
    )
    chat.set_defaults(handler=_chat)


# --- ElevenLabs settings for the commands that need nothing else ------------------------------


@attrs.frozen
class ElevenLabsAccess:
    base_url: str
    api_key: str | None = attrs.field(repr=False)
    agent_id: str


def elevenlabs_access(env: Mapping[str, str], agent: str | None) -> ElevenLabsAccess:
    agent_id = agent or env.get("DEFAULT_AGENT_ID")
    if not agent_id:
        raise CommandError("no agent: pass --agent or set DEFAULT_AGENT_ID")
    return ElevenLabsAccess(
        base_url=(env.get("ELEVENLABS_BASE_URL") or DEFAULT_ELEVENLABS_BASE_URL).rstrip("/"),
        api_key=env.get("ELEVENLABS_API_KEY") or None,
        agent_id=agent_id,
    )


def parse_variables(items: Sequence[str]) -> dict[str, str]:
    variables = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CommandError(f"--var {item!r}: expected NAME=VALUE")
        variables[name.strip()] = value
    return variables


def _run(main: Callable[[], Any]) -> int:
    """Run a command's coroutine; the failures a user can act on become one line."""
    try:
        run_async(main)
    except (ElevenLabsError, EventStoreError, SettingsError, AgentSessionError) as exc:
        raise CommandError(str(exc)) from None
    except httpx.HTTPError as exc:  # pragma: no cover - the client maps transport errors
        raise CommandError(f"{type(exc).__name__} talking to ElevenLabs") from None
    return 0


# --- follow-up state, from a phone's stream ---------------------------------------------------


@attrs.frozen
class FollowUp:
    """How the follow-up of one call stands, as the phone's stream records it."""

    call: str  # "not recorded", "completed", "failed (no-answer)"
    first_message: str  # "none", "requested", "sent", "failed", a delivery status
    message_sid: str | None = None
    error: str | None = None
    replies_from_person: int = 0

    @property
    def settled(self) -> bool:
        """The first message got an outcome (or none will be sent)."""
        return self.first_message not in ("requested",) and not (
            self.call == "completed" and self.first_message == "none"
        )

    def describe(self) -> str:
        if self.call == "not recorded":
            return "call not recorded"
        if self.call != "completed" and self.first_message == "none":
            return f"call {self.call}: no WhatsApp message"
        text = f"call {self.call}, first message {self.first_message}"
        if self.message_sid:
            text += f" ({self.message_sid})"
        if self.error:
            text += f": {self.error}"
        if self.replies_from_person:
            text += f"; {self.replies_from_person} WhatsApp message(s) from the person"
        return text


def follow_up_of(events: Iterable[Any], conversation_id: str | None) -> FollowUp:
    """Fold a phone's events into the follow-up of the call ``conversation_id``."""
    call = "not recorded"
    first = "none"
    reply_id: str | None = None
    sid: str | None = None
    error: str | None = None
    replies = 0
    for event in events:
        match event:
            case CallCompleted() if event.conversation_id == conversation_id:
                call = "completed"
            case CallFailed() if event.conversation_id == conversation_id:
                call = f"failed ({event.reason})"
            case ReplyRequested() if (
                event.kind == "first_message" and event.call_conversation_id == conversation_id
            ):
                reply_id, first = event.reply_id, "requested"
            case ReplySent() if event.reply_id == reply_id and event.part == 0:
                first, sid = "sent", event.message_sid
            case ReplyFailed() if event.reply_id == reply_id:
                first = "failed"
                error = f"Twilio {event.error_code or event.http_status}: {event.detail}"
            case DeliveryStatusChanged() if sid is not None and event.message_sid == sid:
                first = event.status
                if event.error_code is not None:
                    error = f"Twilio {event.error_code}: {event.error_message or ''}".rstrip(": ")
            case MessageReceived() if reply_id is not None:
                replies += 1
            case _:
                pass
    return FollowUp(call, first, sid, error, replies)


async def read_follow_up(store: EventStore, phone: str, conversation_id: str | None) -> FollowUp:
    """The phone's conversation, then its delivery statuses: a status is matched to the
    first message by the sid its ``ReplySent`` recorded, so it is folded after it."""
    events = []
    for stream in (phone_stream(phone), delivery_stream(phone)):
        for record in await store.read_stream(stream):
            try:
                events.append(decode(record))
            except UnknownEventType:
                continue
    return follow_up_of(events, conversation_id)


# --- batch process ----------------------------------------------------------------------------

RESULT_WORDS = {
    "settled_before": "already done",
    "calling": "still calling",
    "processing": "ended, ElevenLabs is still analysing it: run again later",
    "recorded": "recorded",
    "already_recorded": "already recorded (the webhook was first)",
    "settled": "noted",
    "error": "could not be read",
}


def describe_recipient(report: RecipientReport) -> str:
    words = RESULT_WORDS[report.result]
    detail = f" ({report.detail})" if report.detail and report.result != "settled_before" else ""
    return (
        f"  {report.recipient_id}  {report.phone or '-':<16} {report.status:<11} "
        f"{report.conversation_id or '-'}: {words}{detail}"
    )


def print_report(report: BatchReport, out: Out) -> None:
    batch = report.batch
    out(f"batch {batch.id} {batch.name!r}: {batch.status}, {len(report.recipients)} recipients")
    for recipient in report.recipients:
        out(describe_recipient(recipient))
    recorded = sum(1 for r in report.recipients if r.result == "recorded")
    waiting = sum(1 for r in report.recipients if r.result in ("calling", "processing", "error"))
    out(
        f"{recorded} call(s) recorded now, {len(report.followed_up)} follow-up(s) started, "
        f"{waiting} recipient(s) not finished"
        + ("; the batch is finished" if report.finished else "")
    )


async def process_command(
    store: EventStore,
    api: ElevenLabsAPI,
    notify_phone: Callable[[str], object],
    batch_id: str,
    *,
    wait: float,
    follow_up_failed_calls: bool,
    out: Out,
) -> BatchReport:
    """Process one batch now, print what was done, then how the follow-ups it started went."""
    detail = await api.get_batch(batch_id)
    progress = await load_progress(store, batch_id)
    work = BatchWork(
        store, api, notify_phone, source="cli", follow_up_failed_calls=follow_up_failed_calls
    )
    report = await process_batch(detail, progress, work)
    print_report(report, out)
    if report.followed_up:
        conversations = {r.phone: r.conversation_id for r in report.recipients if r.phone}
        outcomes = await wait_for_follow_ups(store, conversations, report.followed_up, wait)
        for phone in report.followed_up:
            out(f"  {phone}: {outcomes[phone].describe()}")
    return report


async def wait_for_follow_ups(
    store: EventStore,
    conversations: Mapping[str, str | None],
    phones: Sequence[str],
    wait: float,
) -> dict[str, FollowUp]:
    """Each phone's follow-up once its first message has an outcome, or as it is at ``wait``."""
    outcomes: dict[str, FollowUp] = {}
    pending = list(phones)
    with trio.move_on_after(wait):
        while pending:
            head = await store.head()
            for phone in list(pending):
                outcomes[phone] = await read_follow_up(store, phone, conversations.get(phone))
                if outcomes[phone].settled:
                    pending.remove(phone)
            if pending:
                await store.wait_for_events(head)
    for phone in pending:
        outcomes[phone] = await read_follow_up(store, phone, conversations.get(phone))
    return outcomes


def _process(args: argparse.Namespace) -> int:
    # The monitor stays off here: this command is the one look at the batch.
    environ = {**os.environ, "AFTERCALL_BATCH_POLL_SECONDS": "off"}

    async def main() -> None:
        async with open_system(environ) as system:
            settings = system.settings
            api = ElevenLabsAPI(
                system.http, settings.elevenlabs_base_url, settings.elevenlabs_api_key
            )
            await process_command(
                system.store,
                api,
                system.notify_phone,
                args.batch_id,
                wait=args.wait,
                follow_up_failed_calls=settings.follow_up_failed_calls,
                out=print,
            )

    return _run(main)


# --- batch latest -----------------------------------------------------------------------------


async def latest_command(store: EventStore, api: ElevenLabsAPI, agent_id: str, out: Out) -> None:
    page = await api.list_batches(agent_id, limit=1)
    if not page.batches:
        out(f"agent {agent_id} has no batch calls")
        return
    detail = await api.get_batch(page.batches[0].id)
    progress = await load_progress(store, detail.batch.id)
    for line in describe_latest(detail, progress):
        out(line)
    for recipient in detail.recipients:
        phone = recipient_phone(recipient)
        follow_up = (
            await read_follow_up(store, phone, recipient.conversation_id)
            if phone
            else FollowUp("not recorded", "none")
        )
        out(
            f"  {recipient.id}  {phone or '-':<16} {recipient.status:<11} "
            f"{recipient.conversation_id or '-'}  {follow_up.describe()}"
        )


def describe_latest(detail: BatchDetail, progress: BatchProgress) -> list[str]:
    batch = detail.batch
    created = (
        datetime.fromtimestamp(batch.created_at_unix, UTC).strftime("%Y-%m-%d %H:%M UTC")
        if batch.created_at_unix
        else "?"
    )
    lines = [
        f"batch {batch.id} {batch.name!r} (agent {batch.agent_id}), created {created}: "
        f"{batch.status}, {batch.total_calls_finished}/{batch.total_calls_scheduled} calls "
        f"finished, retried {batch.retry_count} time(s)"
    ]
    if progress.finished is not None:
        done = progress.finished
        lines.append(
            f"aftercall: finished ({done.completed} completed, {done.voicemail} voicemail, "
            f"{done.failed} failed, {done.cancelled} cancelled)"
        )
    elif progress.seen:
        lines.append(f"aftercall: following it, {len(progress.settled)} recipient call(s) settled")
    else:
        lines.append("aftercall: not looked at yet (run: aftercall batch process " + batch.id + ")")
    return lines


def _latest(args: argparse.Namespace) -> int:
    access = elevenlabs_access(os.environ, args.agent)
    location = store_location()

    async def main() -> None:
        async with (
            open_store(location.database_url, location.sqlite_path) as store,
            httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0)) as http,
        ):
            api = ElevenLabsAPI(http, access.base_url, access.api_key)
            await latest_command(store, api, access.agent_id, print)

    return _run(main)


# --- call -------------------------------------------------------------------------------------


def _call(args: argparse.Namespace) -> int:
    access = elevenlabs_access(os.environ, args.agent)
    try:
        phone = normalise_phone(args.phone)
    except InvalidPhone as exc:
        raise CommandError(str(exc)) from None
    number_id = args.phone_number_id or os.environ.get("ELEVENLABS_AGENT_PHONE_NUMBER_ID")
    if not number_id:
        raise CommandError(
            "no phone number to call from: pass --phone-number-id or set "
            "ELEVENLABS_AGENT_PHONE_NUMBER_ID (the agent's number id at ElevenLabs, phnum_...)"
        )
    variables = parse_variables(args.var)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0)) as http:
            api = ElevenLabsAPI(http, access.base_url, access.api_key)
            placed = await api.twilio_outbound_call(
                agent_id=access.agent_id,
                agent_phone_number_id=number_id,
                to_number=phone,
                dynamic_variables=variables,
            )
        if not placed.success:
            raise CommandError(f"ElevenLabs did not place the call: {placed.message}")
        print(
            f"calling {phone}: conversation {placed.conversation_id}, Twilio call {placed.call_sid}"
        )
        print(
            "when the call ends, the post-call webhook records it and the WhatsApp follow-up "
            f"starts; follow it with: aftercall events show {phone_stream(phone)}"
        )

    return _run(main)


# --- agent chat -------------------------------------------------------------------------------


def _frame_text(frame: Any) -> str:
    if isinstance(frame, Mapping):
        return json.dumps(frame, ensure_ascii=False)
    if attrs.has(type(frame)):
        return f"{type(frame).__name__} {json.dumps(attrs.asdict(frame), default=str)}"
    return repr(frame)


async def chat_command(
    http: httpx.AsyncClient,
    config: AgentSessionConfig,
    lines: Callable[[], Any],
    out: Out,
) -> int:
    """Chat until ``lines()`` returns "" (end of input) or ``/quit``; returns the turns."""
    config = attrs.evolve(
        config, frame_observer=lambda direction, frame: out(f"{direction} {_frame_text(frame)}")
    )
    turns = 0
    async with trio.open_nursery() as nursery:
        initiation = proto.initiation_frame(config.user_id, config.dynamic_variables)
        out(f"-> {_frame_text(initiation)}")
        session = await AgentSession.open(nursery, http, config)
        out(f"<- conversation_initiation_metadata conversation_id={session.conversation_id}")
        if session.first_message:
            out(f"agent: {session.first_message}")
        try:
            while True:
                line = await lines()
                if not line or line.strip() == "/quit":
                    break
                if not line.strip():
                    continue
                answer = await session.ask(line.strip())
                turns += 1
                out(f"agent: {answer.text or '(empty answer)'}  [{answer.agent_seconds:.2f} s]")
        finally:
            await session.aclose()
            code = session.close_info
            out(f"session closed: {code}")
    return turns


def _chat(args: argparse.Namespace) -> int:
    access = elevenlabs_access(os.environ, args.agent)
    config = AgentSessionConfig(
        base_url=access.base_url,
        agent_id=access.agent_id,
        api_key=access.api_key,
        user_id=args.user,
        dynamic_variables=parse_variables(args.var),
        turn_timeout=args.turn_timeout,
    )
    stdin: TextIO = sys.stdin
    print(f"chatting with agent {access.agent_id}: type a message, /quit or Ctrl-D to end")

    async def read_line() -> str:
        return await trio.to_thread.run_sync(stdin.readline, abandon_on_cancel=True)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0)) as http:
            await chat_command(http, config, read_line, partial(print, flush=True))

    return _run(main)
