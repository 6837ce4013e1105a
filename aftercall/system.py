"""The composition root: build the whole system from settings, in one structured scope.

Everything else receives what it needs as arguments; this is the one place that reads
settings and wires parts together. ``open_system`` is used by the web app (through
``run_system``, started from Hypercorn's ``before_serving``), by ``aftercall demo`` and by
the end-to-end tests, so all three run the same system.

With ``AFTERCALL_SANDBOX=1`` the ElevenLabs and Twilio stand-ins are started first, inside
the same scope, and every URL and credential that points at those services is filled in
from them: no account needed.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from actors.runtime import ActorSettings, ActorSystem, open_actor_system
from aftercall.operator_store import open_operator_store
from aftercall.sandbox_phone import StandInPhone
from aftercall.settings import Settings, is_sandbox, load_settings
from aftercall.storage import open_read_models, open_store
from clients.elevenlabs.api import ElevenLabsAPI
from clients.http1 import Http1Transport
from clients.twilio.sender import TwilioConfig, WhatsAppSender
from events.store import EventStore
from followup.call_monitor import CallMonitorHandle, MonitorSettings, open_call_monitor
from followup.conversation import Rules
from followup.phone import (
    ConflictCount,
    PhoneDependencies,
    PhoneSettings,
    Wake,
    phone_actor_factory,
    resume_unfinished,
)
from projections.runner import ProjectionRunner, open_projection_runner
from sandbox.elevenlabs import DEFAULT_AGENT_ID, ElevenLabsStandIn, serve_elevenlabs
from sandbox.environment import stand_in_environment
from sandbox.twilio import TwilioStandIn, serve_twilio
from web.console.accounts import OperatorAccounts

logger = logging.getLogger(__name__)


@attrs.frozen
class Sandbox:
    """The in-process stand-ins, when running with ``AFTERCALL_SANDBOX=1``."""

    elevenlabs: ElevenLabsStandIn
    twilio: TwilioStandIn


@attrs.define(eq=False)
class System:
    """A running aftercall: what web handlers and commands act on."""

    settings: Settings
    store: EventStore
    phones: ActorSystem[Wake]
    http: httpx.AsyncClient
    sender: WhatsAppSender
    sandbox: Sandbox | None = None
    resumed_phones: int = 0
    call_monitor: CallMonitorHandle | None = None
    #: The read models following the log (history, conversations, metrics).
    projections: ProjectionRunner | None = None
    #: Decisions another process recorded first (followup.phone.DecisionConflict).
    conflicts: ConflictCount = attrs.field(factory=ConflictCount)
    #: The operator accounts of the console (hashes and sessions beside the log).
    operators: OperatorAccounts = attrs.field(kw_only=True)

    @property
    def sandbox_phone(self) -> StandInPhone | None:
        """The console's phone panel, in sandbox mode: the stand-ins play the outside."""
        if self.sandbox is None:
            return None
        return StandInPhone(
            self.sandbox.elevenlabs, self.sandbox.twilio, self.settings.default_agent_id
        )

    def notify_phone(self, phone: str, version: int | None = None, event: Any = None) -> bool:
        """Tell the phone's actor its stream grew (never waits; the log holds the work).

        ``version`` and ``event``: what the caller just appended, so the actor can skip
        reading it back.
        """
        return self.phones.notify(phone, Wake(version, event))


DEFAULT_SANDBOX_PUBLIC_URL = "http://127.0.0.1:8000"
#: The sandbox's approved first-message template (variables: 1 name, 2 the call's summary).
SANDBOX_TEMPLATE = (
    "Hi {{1}}, thanks for the call just now. {{2}} Reply here if anything else comes up."
)


@asynccontextmanager
async def _sandbox(environ: Mapping[str, str]) -> AsyncIterator[tuple[Sandbox, dict[str, str]]]:
    public = (environ.get("PUBLIC_BASE_URL") or DEFAULT_SANDBOX_PUBLIC_URL).rstrip("/")
    async with (
        serve_elevenlabs(
            ElevenLabsStandIn(webhook_secret="wsec_sandbox_" + secrets.token_hex(16))
        ) as elevenlabs,
        serve_twilio(TwilioStandIn(webhook_url=f"{public}/webhooks/twilio/whatsapp")) as twilio,
    ):
        elevenlabs.webhook_url = f"{public}/webhooks/elevenlabs/post-call"
        overrides = stand_in_environment(
            elevenlabs, twilio, public, environ.get("DEFAULT_AGENT_ID") or DEFAULT_AGENT_ID
        )
        overrides["ELEVENLABS_WEBHOOK_SECRET"] = str(elevenlabs.webhook_secret)
        if not environ.get("AFTERCALL_FIRST_MESSAGE_TEMPLATE_SID"):
            # As in production, a first message after a call is outside WhatsApp's 24-hour
            # window and needs an approved template; free text fails there with 63016,
            # which is what a newcomer's first sandbox call showed.
            overrides["AFTERCALL_FIRST_MESSAGE_TEMPLATE_SID"] = twilio.register_template(
                SANDBOX_TEMPLATE
            )
        yield Sandbox(elevenlabs, twilio), overrides


@asynccontextmanager
async def open_system(
    environ: Mapping[str, str] | None = None,
    *,
    settings: Settings | None = None,
    store: EventStore | None = None,
) -> AsyncIterator[System]:
    """Build and run the system until the block ends, then shut it down in order:
    actors finish the message in hand, the store commits what is queued, sockets close.

    ``store`` replaces the one the settings name (tests pass a store on their own schema).
    """
    env = dict(os.environ if environ is None else environ)
    async with AsyncExitStack() as stack:
        sandbox: Sandbox | None = None
        if settings is None:
            overrides: dict[str, str] = {}
            if is_sandbox(env):
                sandbox, overrides = await stack.enter_async_context(_sandbox(env))
            settings = load_settings(env, overrides=overrides)
        if store is None:
            store = await stack.enter_async_context(
                open_store(settings.store.database_url, settings.store.sqlite_path)
            )
        # Read models follow the log from here on; they are closed after everything that
        # appends (the exit stack unwinds in reverse), and never hold up start-up.
        models = await stack.enter_async_context(open_read_models(store))
        projections = await stack.enter_async_context(open_projection_runner(store, models))
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                timeout=httpx.Timeout(15.0, connect=5.0),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
            )
        )
        twilio_config = TwilioConfig(
            api_base_url=settings.twilio_api_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            whatsapp_from=settings.twilio_whatsapp_from,
            status_callback_url=settings.status_callback_url,
        )
        # Twilio requests go through the lean HTTP/1.1 transport: one request per reply
        # part, and httpcore's pool cost more CPU than anything else on that path.
        twilio_transport = await stack.enter_async_context(Http1Transport())
        sender = WhatsAppSender(
            twilio_transport,
            twilio_config,
        )
        rules = Rules(
            optout_keywords=settings.optout_keywords,
            optin_keywords=settings.optin_keywords,
            handoff_keywords=settings.handoff_keywords,
        )
        deps = PhoneDependencies(
            settings=PhoneSettings(
                elevenlabs_base_url=settings.elevenlabs_base_url,
                elevenlabs_api_key=settings.elevenlabs_api_key,
                default_agent_id=settings.default_agent_id,
                first_message_text=settings.first_message_text,
                fallback_text=settings.fallback_text,
                media_notice_text=settings.media_notice_text,
                missed_call_text=settings.missed_call_text,
                first_message_template_sid=settings.first_message_template_sid,
                turn_timeout=settings.turn_timeout,
                rules=rules,
                optout_confirmation_text=settings.optout_confirmation_text,
                optin_confirmation_text=settings.optin_confirmation_text,
                handoff_notice_text=settings.handoff_notice_text,
                unnamed=settings.unnamed,
                missed_call_summary=settings.missed_call_summary,
                handoff_tool=settings.handoff_tool,
                auto_return_after=settings.handoff_auto_return,
            ),
            http=http,
            sender=sender,
        )
        phones = await stack.enter_async_context(
            open_actor_system(
                phone_actor_factory(deps),
                store,
                ActorSettings(idle_timeout=settings.idle_timeout),
            )
        )
        system = System(
            settings,
            store,
            phones,
            http,
            sender,
            sandbox,
            projections=projections,
            conflicts=deps.conflicts,
            operators=OperatorAccounts(
                store, await stack.enter_async_context(open_operator_store(store))
            ),
        )
        if settings.batch_poll_seconds is not None:
            system.call_monitor = await stack.enter_async_context(
                open_call_monitor(
                    store,
                    ElevenLabsAPI(http, settings.elevenlabs_base_url, settings.elevenlabs_api_key),
                    MonitorSettings(
                        agent_id=settings.default_agent_id,
                        poll_seconds=settings.batch_poll_seconds,
                        follow_up_failed_calls=settings.follow_up_failed_calls,
                    ),
                    system.notify_phone,
                )
            )
        system.resumed_phones = await resume_unfinished(
            store, phones, rules, settings.handoff_auto_return
        )
        yield system


async def run_system(
    stop: trio.Event,
    environ: Mapping[str, str] | None = None,
    *,
    store: EventStore | None = None,
    task_status: trio.TaskStatus[System] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The web app's owner task: build the system, hand it over, run until ``stop``."""
    async with open_system(environ, store=store) as system:
        task_status.started(system)
        await stop.wait()
