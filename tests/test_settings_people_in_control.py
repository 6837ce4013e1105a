"""Settings for people in control: the language of aftercall's own texts, the keywords,
the hand-off tool and the automatic hand-back; each mistake named at start-up."""

from __future__ import annotations

import pytest

from aftercall.settings import SettingsError, load_settings
from aftercall.texts import ENGLISH, SPANISH, TEXTS

REQUIRED = {
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "token",
    "TWILIO_WHATSAPP_FROM": "whatsapp:+14155238886",
    "DEFAULT_AGENT_ID": "agent_x",
    "PUBLIC_BASE_URL": "https://aftercall.example.com",
}


def test_english_is_the_default_and_spanish_is_one_setting_away() -> None:
    english = load_settings(REQUIRED)
    assert (english.language, english.first_message_text) == ("en", ENGLISH.first_message)
    spanish = load_settings({**REQUIRED, "AFTERCALL_LANGUAGE": "ES"})
    assert spanish.language == "es"
    assert (
        spanish.first_message_text,
        spanish.fallback_text,
        spanish.media_notice_text,
        spanish.missed_call_text,
        spanish.optout_confirmation_text,
        spanish.optin_confirmation_text,
        spanish.handoff_notice_text,
        spanish.unnamed,
    ) == (
        SPANISH.first_message,
        SPANISH.fallback,
        SPANISH.media_notice,
        SPANISH.missed_call,
        SPANISH.optout_confirmation,
        SPANISH.optin_confirmation,
        SPANISH.handoff_notice,
        "de nuevo",
    )


def test_every_text_is_still_overridden_on_its_own() -> None:
    custom = load_settings(
        {
            **REQUIRED,
            "AFTERCALL_LANGUAGE": "es",
            "AFTERCALL_OPTOUT_CONFIRMATION": "Listo, no te escribimos más.",
            "AFTERCALL_OPTIN_CONFIRMATION": "¡De vuelta!",
            "AFTERCALL_HANDOFF_NOTICE": "Ya viene alguien.",
            "AFTERCALL_FALLBACK_TEXT": "Un momento.",
        }
    )
    assert custom.optout_confirmation_text == "Listo, no te escribimos más."
    assert custom.optin_confirmation_text == "¡De vuelta!"
    assert custom.handoff_notice_text == "Ya viene alguien."
    assert custom.fallback_text == "Un momento."
    assert custom.media_notice_text == SPANISH.media_notice


def test_each_language_has_every_text() -> None:
    for texts in TEXTS.values():
        for name in ("first_message", "missed_call", "optout_confirmation", "handoff_notice"):
            assert getattr(texts, name).strip()
        texts.first_message.format(name="Ana", summary="x")  # only {name} and {summary}


def test_keywords_tool_and_auto_return() -> None:
    default = load_settings(REQUIRED)
    assert "BAJA" in default.optout_keywords
    assert "STOP" in default.optout_keywords
    assert default.optin_keywords == ("START", "ALTA", "SUSCRIBIR")
    assert (default.handoff_keywords, default.handoff_tool) == ((), "handoff_to_human")
    assert default.handoff_auto_return is None
    custom = load_settings(
        {
            **REQUIRED,
            "AFTERCALL_OPTOUT_KEYWORDS": "basta, no más",
            "AFTERCALL_HANDOFF_KEYWORDS": "humano,agent",
            "AFTERCALL_HANDOFF_TOOL": "transfer_to_person",
            "AFTERCALL_HANDOFF_AUTO_RETURN": "900",
        }
    )
    assert custom.optout_keywords == ("basta", "no más")
    assert custom.handoff_keywords == ("humano", "agent")
    assert (custom.handoff_tool, custom.handoff_auto_return) == ("transfer_to_person", 900.0)
    assert load_settings({**REQUIRED, "AFTERCALL_HANDOFF_TOOL": "off"}).handoff_tool is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AFTERCALL_LANGUAGE": "fr"}, "AFTERCALL_LANGUAGE must be one of en, es"),
        ({"AFTERCALL_OPTOUT_KEYWORDS": "stop, !!!"}, "no letter or digit: !!!"),
        ({"AFTERCALL_OPTIN_KEYWORDS": "Stop"}, "share stop"),
        ({"AFTERCALL_HANDOFF_AUTO_RETURN": "soon"}, "AFTERCALL_HANDOFF_AUTO_RETURN"),
        ({"AFTERCALL_OPTOUT_CONFIRMATION": "  "}, "AFTERCALL_OPTOUT_CONFIRMATION is set but"),
    ],
)
def test_mistakes_are_named_at_start_up(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings({**REQUIRED, **env})
