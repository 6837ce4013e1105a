"""The settings that point aftercall at served stand-ins, in one place.

The in-process sandbox (``AFTERCALL_SANDBOX=1``), the end-to-end tests, the restart tests
and the conversation benchmark all run aftercall against the stand-ins; they take the
environment from here, so a new setting is added once.
"""

from __future__ import annotations

import socket
from typing import Any

from sandbox.elevenlabs import DEFAULT_AGENT_ID


def free_port() -> int:
    """A port nothing listens on right now (for a server whose URL must be known first)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stand_in_environment(
    elevenlabs: Any, twilio: Any, public_base_url: str, agent_id: str = DEFAULT_AGENT_ID
) -> dict[str, str]:
    """Environment variables for aftercall, given *served* stand-ins and aftercall's URL.

    The post-call webhook secret is left to the caller: whether aftercall is told it is
    part of what a test or a deployment decides.
    """
    environ = {
        "PUBLIC_BASE_URL": public_base_url.rstrip("/"),
        "ELEVENLABS_BASE_URL": str(elevenlabs.base_url),
        "DEFAULT_AGENT_ID": agent_id,
        "TWILIO_API_BASE_URL": str(twilio.base_url),
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_WHATSAPP_FROM": twilio.whatsapp_from,
    }
    return environ
