"""Settings from environment variables, read once at start-up.

The names are the seed's (``ELEVENLABS_API_KEY``, ``TWILIO_ACCOUNT_SID``, ...), plus base
URLs so a stand-in can take the place of either service. A missing required setting stops
start-up with one message naming *every* missing variable, not the first one found.
``AFTERCALL_SANDBOX=1`` starts the local stand-ins in-process and fills in everything that
points at ElevenLabs or Twilio, so aftercall runs with no credentials at all.

Secrets are kept out of ``repr`` so a settings object can be logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from aftercall.storage import StoreLocation, store_location
from aftercall.texts import DEFAULT_LANGUAGE, ENGLISH, TEXTS
from followup.conversation import DEFAULT_OPTIN_KEYWORDS, DEFAULT_OPTOUT_KEYWORDS, keyword_form


class SettingsError(ValueError):
    """Settings that cannot work; the message names every variable to fix."""


DEFAULT_FIRST_MESSAGE = ENGLISH.first_message
DEFAULT_FALLBACK = ENGLISH.fallback
DEFAULT_MISSED_CALL_TEXT = ENGLISH.missed_call
DEFAULT_MEDIA_NOTICE = ENGLISH.media_notice
#: The agent's client tool that asks for a person (``AFTERCALL_HANDOFF_TOOL``).
DEFAULT_HANDOFF_TOOL = "handoff_to_human"


@attrs.frozen
class Settings:
    store: StoreLocation
    public_base_url: str
    elevenlabs_base_url: str
    elevenlabs_api_key: str | None = attrs.field(repr=False)
    elevenlabs_webhook_secret: str | None = attrs.field(repr=False)
    default_agent_id: str
    twilio_api_base_url: str
    twilio_account_sid: str
    twilio_auth_token: str = attrs.field(repr=False)
    twilio_whatsapp_from: str
    first_message_template_sid: str | None = None
    first_message_text: str = DEFAULT_FIRST_MESSAGE
    fallback_text: str = DEFAULT_FALLBACK
    media_notice_text: str = DEFAULT_MEDIA_NOTICE
    missed_call_text: str = DEFAULT_MISSED_CALL_TEXT
    turn_timeout: float = 30.0
    idle_timeout: float = 1800.0
    admin_token: str | None = attrs.field(default=None, repr=False)
    sandbox: bool = False
    #: Seconds between the call monitor's polls of ElevenLabs batch calling; None: no monitor.
    batch_poll_seconds: float | None = None
    #: Send a WhatsApp message after a call that never connected (busy, no answer, voicemail).
    follow_up_failed_calls: bool = False
    #: The agent's phone number id at ElevenLabs, for ``aftercall call``.
    elevenlabs_agent_phone_number_id: str | None = None
    #: ``AFTERCALL_LANGUAGE``: which defaults the texts below came from.
    language: str = DEFAULT_LANGUAGE
    optout_confirmation_text: str = ENGLISH.optout_confirmation
    optin_confirmation_text: str = ENGLISH.optin_confirmation
    handoff_notice_text: str = ENGLISH.handoff_notice
    unnamed: str = ENGLISH.unnamed
    missed_call_summary: str = ENGLISH.missed_call_summary
    optout_keywords: tuple[str, ...] = DEFAULT_OPTOUT_KEYWORDS
    optin_keywords: tuple[str, ...] = DEFAULT_OPTIN_KEYWORDS
    #: Words that, alone in a message, ask for a person (empty: off).
    handoff_keywords: tuple[str, ...] = ()
    #: The agent's hand-off client tool; ``None``: the agent cannot ask for a person.
    handoff_tool: str | None = DEFAULT_HANDOFF_TOOL
    #: Seconds without anything from a person at the business before a conversation waiting
    #: for (or held by) one goes back to the bot; ``None``: never.
    handoff_auto_return: float | None = None

    @property
    def status_callback_url(self) -> str:
        return f"{self.public_base_url}/webhooks/twilio/status"

    @property
    def whatsapp_webhook_url(self) -> str:
        return f"{self.public_base_url}/webhooks/twilio/whatsapp"


REQUIRED = (
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_WHATSAPP_FROM",
    "DEFAULT_AGENT_ID",
    "PUBLIC_BASE_URL",
)


def _float(env: Mapping[str, str], name: str, default: float, problems: list[str]) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{name} must be a number of seconds, not {raw!r}")
        return default
    if value <= 0:
        problems.append(f"{name} must be positive, not {raw!r}")
    return value


#: Poll interval of the call monitor in sandbox mode, where it runs unless switched off.
SANDBOX_BATCH_POLL_SECONDS = 5.0
DEFAULT_ELEVENLABS_BASE_URL = "https://api.elevenlabs.io"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(env: Mapping[str, str], name: str, problems: list[str]) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw not in _FALSE:
        problems.append(f"{name} must be 1/true/yes/on or 0/false/no/off, not {env[name]!r}")
    return False


def _keywords(
    env: Mapping[str, str], name: str, default: tuple[str, ...], problems: list[str]
) -> tuple[str, ...]:
    """A comma-separated keyword list; each must be something a message can be alone
    (letters or digits, once case, accents and punctuation are set aside)."""
    raw = env.get(name)
    if raw is None:
        return default
    words = tuple(word.strip() for word in raw.split(",") if word.strip())
    empty = [word for word in words if not keyword_form(word)]
    if empty:
        problems.append(f"{name} has keywords with no letter or digit: {', '.join(empty)}")
    return words


def _optional_seconds(env: Mapping[str, str], name: str, problems: list[str]) -> float | None:
    """Seconds, or ``None`` when unset or ``0``/``off``."""
    raw = env.get(name, "").strip()
    if not raw or raw.lower() in ("0", "off", "no", "false"):
        return None
    return _float(env, name, 0.0, problems)


def batch_poll_seconds(env: Mapping[str, str], problems: list[str]) -> float | None:
    """``AFTERCALL_BATCH_POLL_SECONDS``: unset means off (on, every 5 s, in sandbox mode);
    ``0`` or ``off`` switches the monitor off."""
    raw = env.get("AFTERCALL_BATCH_POLL_SECONDS", "").strip()
    if not raw:
        return SANDBOX_BATCH_POLL_SECONDS if is_sandbox(env) else None
    if raw.lower() in ("0", "off", "no", "false"):
        return None
    return _float(env, "AFTERCALL_BATCH_POLL_SECONDS", SANDBOX_BATCH_POLL_SECONDS, problems)


def is_sandbox(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("AFTERCALL_SANDBOX", "").lower() in ("1", "true", "yes", "on")


def load_settings(
    environ: Mapping[str, str] | None = None, *, overrides: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment (``overrides`` win, e.g. the sandbox's URLs).

    Raises ``SettingsError`` listing every missing or malformed variable at once.
    """
    env = dict(os.environ if environ is None else environ)
    env.update(overrides or {})
    problems: list[str] = []
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        problems.append("missing " + ", ".join(missing))
    turn_timeout = _float(env, "AFTERCALL_TURN_TIMEOUT", 30.0, problems)
    idle_timeout = _float(env, "AFTERCALL_IDLE_TIMEOUT", 1800.0, problems)
    public = env.get("PUBLIC_BASE_URL", "").rstrip("/")
    if public and not public.startswith(("http://", "https://")):
        problems.append(f"PUBLIC_BASE_URL must start with http:// or https://, not {public!r}")
    for name in (
        "AFTERCALL_FIRST_MESSAGE",
        "AFTERCALL_FALLBACK_TEXT",
        "AFTERCALL_MEDIA_NOTICE",
        "AFTERCALL_MISSED_CALL_TEXT",
        "AFTERCALL_OPTOUT_CONFIRMATION",
        "AFTERCALL_OPTIN_CONFIRMATION",
        "AFTERCALL_HANDOFF_NOTICE",
    ):
        if name in env and not env[name].strip():
            problems.append(f"{name} is set but empty (an empty WhatsApp message is never sent)")
    language = (env.get("AFTERCALL_LANGUAGE") or DEFAULT_LANGUAGE).strip().lower()
    if language not in TEXTS:
        problems.append(
            f"AFTERCALL_LANGUAGE must be one of {', '.join(TEXTS)}, "
            f"not {env['AFTERCALL_LANGUAGE']!r}"
        )
        language = DEFAULT_LANGUAGE
    texts = TEXTS[language]
    poll_seconds = batch_poll_seconds(env, problems)
    follow_up_failed = _flag(env, "AFTERCALL_FOLLOW_UP_FAILED_CALLS", problems)
    optout_keywords = _keywords(env, "AFTERCALL_OPTOUT_KEYWORDS", DEFAULT_OPTOUT_KEYWORDS, problems)
    optin_keywords = _keywords(env, "AFTERCALL_OPTIN_KEYWORDS", DEFAULT_OPTIN_KEYWORDS, problems)
    handoff_keywords = _keywords(env, "AFTERCALL_HANDOFF_KEYWORDS", (), problems)
    clash = {keyword_form(w) for w in optout_keywords} & {keyword_form(w) for w in optin_keywords}
    if clash:
        problems.append(
            "AFTERCALL_OPTOUT_KEYWORDS and AFTERCALL_OPTIN_KEYWORDS share "
            + ", ".join(sorted(clash))
        )
    tool_name = (env.get("AFTERCALL_HANDOFF_TOOL") or DEFAULT_HANDOFF_TOOL).strip()
    handoff_tool = None if tool_name.lower() in ("off", "none", "0", "no", "false") else tool_name
    auto_return = _optional_seconds(env, "AFTERCALL_HANDOFF_AUTO_RETURN", problems)
    first_message = env.get("AFTERCALL_FIRST_MESSAGE") or texts.first_message
    try:
        first_message.format(name="x", summary="y")
    except (KeyError, IndexError, ValueError) as exc:
        problems.append(f"AFTERCALL_FIRST_MESSAGE may only use {{name}} and {{summary}} ({exc!r})")
    if problems:
        raise SettingsError("cannot start: " + "; ".join(problems))
    return Settings(
        store=store_location(env),
        public_base_url=public,
        elevenlabs_base_url=(env.get("ELEVENLABS_BASE_URL") or DEFAULT_ELEVENLABS_BASE_URL).rstrip(
            "/"
        ),
        elevenlabs_api_key=env.get("ELEVENLABS_API_KEY") or None,
        elevenlabs_webhook_secret=env.get("ELEVENLABS_WEBHOOK_SECRET") or None,
        default_agent_id=env["DEFAULT_AGENT_ID"],
        twilio_api_base_url=(env.get("TWILIO_API_BASE_URL") or "https://api.twilio.com").rstrip(
            "/"
        ),
        twilio_account_sid=env["TWILIO_ACCOUNT_SID"],
        twilio_auth_token=env["TWILIO_AUTH_TOKEN"],
        twilio_whatsapp_from=env["TWILIO_WHATSAPP_FROM"],
        first_message_template_sid=env.get("AFTERCALL_FIRST_MESSAGE_TEMPLATE_SID") or None,
        first_message_text=first_message,
        fallback_text=env.get("AFTERCALL_FALLBACK_TEXT") or texts.fallback,
        media_notice_text=env.get("AFTERCALL_MEDIA_NOTICE") or texts.media_notice,
        missed_call_text=env.get("AFTERCALL_MISSED_CALL_TEXT") or texts.missed_call,
        turn_timeout=turn_timeout,
        idle_timeout=idle_timeout,
        admin_token=env.get("AFTERCALL_ADMIN_TOKEN") or None,
        sandbox=is_sandbox(env),
        batch_poll_seconds=poll_seconds,
        follow_up_failed_calls=follow_up_failed,
        elevenlabs_agent_phone_number_id=env.get("ELEVENLABS_AGENT_PHONE_NUMBER_ID") or None,
        language=language,
        optout_confirmation_text=env.get("AFTERCALL_OPTOUT_CONFIRMATION")
        or texts.optout_confirmation,
        optin_confirmation_text=env.get("AFTERCALL_OPTIN_CONFIRMATION") or texts.optin_confirmation,
        handoff_notice_text=env.get("AFTERCALL_HANDOFF_NOTICE") or texts.handoff_notice,
        unnamed=texts.unnamed,
        missed_call_summary=texts.missed_call_summary,
        optout_keywords=optout_keywords,
        optin_keywords=optin_keywords,
        handoff_keywords=handoff_keywords,
        handoff_tool=handoff_tool,
        handoff_auto_return=auto_return,
    )


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("AFTERCALL_DATA_DIR") or "var")
