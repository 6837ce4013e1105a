"""``aftercall sandbox``: run the ElevenLabs and Twilio stand-ins until Ctrl-C or SIGTERM.

A developer (or the demo) starts this next to aftercall and points aftercall at it with the
environment block it prints. Every credential it prints is a fixed sandbox value that opens
nothing but these stand-ins, so printing it is safe and keeps configurations stable across
restarts.
"""

from __future__ import annotations

import argparse
import errno
import signal
from typing import Any, TextIO

import trio

from aftercall.commands import CommandError
from sandbox.elevenlabs import DEFAULT_AGENT_ID, ElevenLabsStandIn, serve_elevenlabs
from sandbox.twilio import TwilioStandIn, serve_twilio

#: Fixed ElevenLabs sandbox credentials (Twilio's live in ``sandbox.twilio``).
ELEVENLABS_SANDBOX_API_KEY = "sk_sandbox5a4db0c55a4db0c55a4db0c55a4db0c55a4db0c5"
ELEVENLABS_SANDBOX_WEBHOOK_SECRET = "wsec_sandbox5a4db0c55a4db0c55a4db0c55a4db0c5"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sandbox",
        help="run local ElevenLabs and Twilio stand-ins",
        description=(
            "Serve local stand-ins for ElevenLabs and Twilio (WhatsApp) and print the "
            "settings that point aftercall at them. Runs until Ctrl-C or SIGTERM."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--elevenlabs-port", type=int, default=8010, metavar="PORT")
    parser.add_argument("--twilio-port", type=int, default=8020, metavar="PORT")
    parser.add_argument(
        "--twilio-webhook-url",
        metavar="URL",
        help="where simulated WhatsApp users post (aftercall's /webhooks/twilio/whatsapp)",
    )
    parser.add_argument(
        "--elevenlabs-webhook-url", metavar="URL", help="where post-call webhooks go"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        trio.run(serve_until_signalled, args)
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        return 130
    except (OSError, BaseExceptionGroup) as exc:
        bind_error = _address_in_use(exc)
        if bind_error is None:
            raise
        raise CommandError(
            f"cannot listen on {args.host} (ports {args.elevenlabs_port} and "
            f"{args.twilio_port}): {bind_error.strerror}"
        ) from None
    return 0


def _address_in_use(exc: BaseException) -> OSError | None:
    """The bind failure inside ``exc`` (trio wraps it in exception groups), if any."""
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _address_in_use(inner)
            if found is not None:
                return found
    return None


async def serve_until_signalled(args: argparse.Namespace, out: TextIO | None = None) -> None:
    """Serve both stand-ins, print how to reach them, stop cleanly on SIGINT or SIGTERM."""
    elevenlabs = ElevenLabsStandIn(
        api_key=ELEVENLABS_SANDBOX_API_KEY,
        webhook_secret=ELEVENLABS_SANDBOX_WEBHOOK_SECRET,
        webhook_url=args.elevenlabs_webhook_url,
    )
    twilio = TwilioStandIn(webhook_url=args.twilio_webhook_url)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            serve_elevenlabs(elevenlabs, args.host, args.elevenlabs_port) as elevenlabs,
            serve_twilio(twilio, args.host, args.twilio_port) as twilio,
        ):
            settings = {
                "ELEVENLABS_BASE_URL": elevenlabs.base_url,
                "ELEVENLABS_API_KEY": elevenlabs.api_key,
                "ELEVENLABS_WEBHOOK_SECRET": elevenlabs.webhook_secret,
                "DEFAULT_AGENT_ID": DEFAULT_AGENT_ID,
                "TWILIO_API_BASE_URL": twilio.base_url,
                "TWILIO_ACCOUNT_SID": twilio.account_sid,
                "TWILIO_AUTH_TOKEN": twilio.auth_token,
                "TWILIO_WHATSAPP_FROM": twilio.whatsapp_from,
            }
            webhook = twilio.webhook_url or "not set (PUT /_sandbox/webhook)"
            lines = [
                "aftercall sandbox: stand-ins are up (Ctrl-C or SIGTERM to stop).",
                f"ElevenLabs stand-in: {elevenlabs.base_url}  "
                f"(control API {elevenlabs.base_url}/_sandbox)",
                f"Twilio stand-in:     {twilio.base_url}  (control API {twilio.base_url}/_sandbox)",
                f"Twilio inbound webhook: {webhook}",
                "",
                "# Sandbox values, not secrets: point aftercall at the stand-ins with",
                *(f"{name}={value}" for name, value in settings.items()),
            ]
            print("\n".join(lines), file=out, flush=True)
            async for signum in signals:
                print(
                    f"aftercall sandbox: {signal.Signals(signum).name}, stopping.",
                    file=out,
                    flush=True,
                )
                return
