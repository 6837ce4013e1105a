"""``aftercall serve`` and ``aftercall demo``: run the service, or watch it work.

``serve`` is ``hypercorn -k trio web.app:app`` with the right worker chosen for you (and
``--sandbox`` to run against the local stand-ins). ``demo`` needs no credentials and no
database server: it starts the stand-ins and the real web app on the embedded store, then
plays one follow-up through the real protocols and narrates each step from the event log.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as serve_hypercorn

from aftercall.commands import CommandError, run_async
from aftercall.settings import SettingsError
from aftercall.system import System, open_system, run_system
from events.calls import CallCompleted, TranscriptLine, call_event_id
from events.codec import to_new_event
from events.conversation import phone_stream
from events.store import EventStore
from sandbox.environment import free_port
from web.console.accounts import OperatorAccounts
from web.factory import TrioOnly, create_app
from web.serving import serve_asgi

#: The operator ``serve --sandbox`` signs in with (its password is new every start).
SANDBOX_OPERATOR = "sandbox"
DEMO_PHONE = "+15551234567"
DEMO_SUMMARY = (
    "Ana called about her October invoice: she was charged twice. "
    "We promised a refund of 20 euros by Friday."
)


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the service (Hypercorn, trio worker)")
    serve.add_argument("--bind", default="127.0.0.1:8000", help="host:port (127.0.0.1:8000)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="start the ElevenLabs and Twilio stand-ins in-process and use them",
    )
    serve.set_defaults(handler=_serve)

    demo = subparsers.add_parser(
        "demo", help="play one call follow-up against the sandbox and narrate it"
    )
    demo.add_argument("--data-dir", help="where the demo's event log goes (default: a temp dir)")
    demo.set_defaults(handler=_demo)


def _serve(args: argparse.Namespace) -> int:
    host, _, port = args.bind.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"--bind must be host:port, not {args.bind!r}")
    if args.sandbox:
        os.environ["AFTERCALL_SANDBOX"] = "1"
        os.environ.setdefault("PUBLIC_BASE_URL", f"http://{args.bind}")
    # The same app as ``hypercorn -k trio web.app:app`` (web/app.py), with the worker chosen;
    # in the sandbox, the same system, announced with where to look and how to sign in.
    system_factory = partial(run_sandbox_system, say=_say) if args.sandbox else run_system
    app = TrioOnly(
        create_app(system_factory, quiet_errors=(SettingsError,), freeze_heap=True),
        exit_on_failure=True,
    )
    config = Config()
    config.bind = [args.bind]
    config.accesslog = "-"
    try:
        run_async(partial(serve_hypercorn, cast(Any, app), config))
    except SettingsError as exc:
        raise CommandError(str(exc)) from exc
    return 0


def _say(text: str) -> None:
    print(text, flush=True)


async def run_sandbox_system(
    stop: trio.Event,
    environ: Mapping[str, str] | None = None,
    *,
    say: Callable[[str], None],
    store: EventStore | None = None,
    task_status: trio.TaskStatus[System] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``run_system`` in sandbox mode, saying where everything is: the console and the
    sandbox operator's sign-in, the phone panel, the stand-ins, the log."""
    async with open_system(environ, store=store) as system:
        password = await sandbox_operator(system.operators)
        say(sandbox_banner(system, password))
        task_status.started(system)
        await stop.wait()


async def sandbox_operator(accounts: OperatorAccounts) -> str:
    """Give the sandbox's operator a new random password (adding it the first time) and
    return it. Printed once, on this terminal: it is a sandbox's, guarding stand-ins."""
    password = secrets.token_urlsafe(12)
    if await accounts.exists(SANDBOX_OPERATOR):
        await accounts.set_password(SANDBOX_OPERATOR, password, by="sandbox")
    else:
        await accounts.add(SANDBOX_OPERATOR, password, by="sandbox")
    return password


def sandbox_banner(system: System, password: str) -> str:
    url = system.settings.public_base_url
    return "\n".join(
        [
            f"aftercall is running in the sandbox at {url}",
            f"  console:    {url}/console",
            f"  sign in as: {SANDBOX_OPERATOR} / {password}   (a new password every start)",
            f"  phone:      {url}/console/sandbox   (end a call, then write as the customer)",
            f"  ElevenLabs stand-in: {system.settings.elevenlabs_base_url}",
            f"  Twilio stand-in:     {system.settings.twilio_api_base_url}",
            f"  event log:  {system.settings.store.describe()}",
        ]
    )


def _demo(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="aftercall-"))
    try:
        run_async(partial(play_demo, data_dir, print))
    except SettingsError as exc:
        raise CommandError(str(exc)) from exc
    return 0


async def play_demo(data_dir: Path, say: Callable[[str], None]) -> None:
    """One follow-up, end to end, through the real app, narrated from the log."""
    port = free_port()
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TWILIO_", "ELEVENLABS_", "DATABASE_URL"))
    }
    environ.update(
        {
            "AFTERCALL_SANDBOX": "1",
            "AFTERCALL_DATA_DIR": str(data_dir),
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        }
    )
    app = create_app(partial(run_system, environ=environ), quiet_errors=(SettingsError,))
    async with serve_asgi(TrioOnly(app), port=port) as url:
        system: System = app.config["AFTERCALL_SYSTEM"]
        assert system.sandbox is not None
        twilio = system.sandbox.twilio
        say(f"aftercall is running at {url} (event log: {system.settings.store.describe()})")
        say(f"ElevenLabs stand-in: {system.settings.elevenlabs_base_url}")
        say(f"Twilio stand-in:     {system.settings.twilio_api_base_url}\n")
        stream = phone_stream(DEMO_PHONE)
        narrator = _Narrator(system, stream, say)

        call = CallCompleted(
            conversation_id="conv_demo_0001",
            agent_id=system.settings.default_agent_id,
            phone=DEMO_PHONE,
            summary=DEMO_SUMMARY,
            transcript=(
                TranscriptLine("agent", "Hi Ana, this is the billing assistant."),
                TranscriptLine("user", "I was charged twice in October."),
                TranscriptLine("agent", "I'm sorry. We'll refund 20 euros by Friday."),
            ),
            dynamic_variables={"user_name": "Ana"},
            customer_name="Ana",
            ended_at=datetime.now(UTC),
            source="cli",
        )
        say("1. The agent's phone call with Ana ends.")
        await system.store.append(
            stream, [to_new_event(call, event_id=call_event_id(call.conversation_id))]
        )
        system.notify_phone(DEMO_PHONE)
        await narrator.until("ReplySent")

        for number, text in (
            (2, "Hi! What did we discuss on the phone?"),
            (3, "And what's my name?"),
        ):
            say(f"\n{number}. Ana answers on WhatsApp.")
            await twilio.user_says(DEMO_PHONE, text, profile_name="Ana")
            await narrator.until("ReplySent")

        say(
            f"\nDone: {narrator.count} events recorded. Replay them with:\n"
            f"  AFTERCALL_DATA_DIR={data_dir} aftercall events show {stream}"
        )


class _Narrator:
    """Prints each new event of one stream as a sentence, until a given type appears."""

    def __init__(self, system: Any, stream: str, say: Callable[[str], None]) -> None:
        self.system = system
        self.stream = stream
        self.say = say
        self.version = 0
        self.count = 0

    async def until(self, wanted: str) -> None:
        with trio.fail_after(30):
            while True:
                head = await self.system.store.head()  # before reading: nothing slips by
                records = await self.system.store.read_stream(self.stream, self.version + 1)
                for record in records:
                    self.version = record.version
                    self.count += 1
                    line = _sentence(record.type, record.data)
                    if line:
                        self.say(f"   {_short(line)}")
                    if record.type == wanted:
                        return
                await self.system.store.wait_for_events(head)


def _short(line: str, limit: int = 300) -> str:
    """One screen line per step: new lines folded, long texts cut."""
    flat = " / ".join(part.strip() for part in line.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _sentence(type_: str, data: Any) -> str | None:
    match type_:
        case "CallCompleted":
            return f"[log] CallCompleted: {data['summary']}"
        case "ReplyRequested":
            if data.get("template"):
                return f"[whatsapp] to Ana ({data['kind']}): template {data['template']}"
            return f"[whatsapp] to Ana ({data['kind']}): {' '.join(data['parts'])}"
        case "ReplySent":
            return f"[twilio] message {data['message_sid']} accepted ({data['status']})"
        case "MessageReceived":
            return f"[whatsapp] Ana: {data['body']}"
        case "AgentSessionOpened":
            return (
                f"[agent] session {data['agent_conversation_id']} opened, primed with the "
                "call summary and the conversation so far"
            )
        case "AgentAsked":
            return "[agent] user_message sent"
        case "AgentAnswered":
            return f"[agent] answered in {data['agent_seconds'] * 1000:.0f} ms: {data['text']}"
        case "AgentTurnFailed":
            return f"[agent] no usable answer ({data['reason']}): fallback follows"
        case _:
            return None
