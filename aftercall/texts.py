"""Every text aftercall itself sends, in each language it speaks (``AFTERCALL_LANGUAGE``).

The agent speaks for itself; these are aftercall's own words: the first message after a
call, the fallback when the agent cannot answer, the notice for media, the message after a
missed call, the opt-out and opt-in confirmations and the notice that a person will answer.
``AFTERCALL_LANGUAGE`` picks the defaults (``en`` unless set; ``es``); each one is still
overridden by its own variable (``AFTERCALL_FIRST_MESSAGE``, ...).

The confirmations name a keyword the person can send back: the opt-out confirmation
names the opt-in keyword of its language (START, ALTA), which the default keyword lists
always hold (``followup.conversation.DEFAULT_OPTIN_KEYWORDS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs


@attrs.frozen
class Texts:
    """One language's defaults.

    ``unnamed`` takes the place of ``{name}`` when the call did not know it ("Hi there",
    "Hola de nuevo"); ``missed_call_summary`` is the template's summary variable after a
    call that did not connect.
    """

    first_message: str
    fallback: str
    missed_call: str
    media_notice: str
    optout_confirmation: str
    optin_confirmation: str
    handoff_notice: str
    unnamed: str
    missed_call_summary: str


ENGLISH: Final = Texts(
    first_message=(
        "Hi {name}, thanks for talking with us just now. If anything else comes to mind, "
        "just reply here and we'll help."
    ),
    fallback=(
        "Sorry, I can't answer that right now. Please write again in a moment and I'll pick it up."
    ),
    missed_call=(
        "Hi, we tried to call you just now but couldn't reach you. If it suits you better, "
        "just reply here and we'll help."
    ),
    media_notice=(
        "Thanks! I can only read text messages here. Could you type your question for me?"
    ),
    optout_confirmation=(
        "You won't get any more messages from us here. Reply START if you'd like to hear "
        "from us again."
    ),
    optin_confirmation="Welcome back! You'll get our messages here again.",
    handoff_notice="Thanks! A person from our team will answer you here shortly.",
    unnamed="there",
    missed_call_summary="We tried to reach you by phone.",
)

SPANISH: Final = Texts(
    first_message=(
        "Hola {name}, gracias por hablar con nosotros hace un momento. Si se te ocurre algo "
        "más, responde aquí y te ayudamos."
    ),
    fallback=(
        "Lo siento, ahora mismo no puedo responder a eso. Escríbenos de nuevo en un momento "
        "y lo retomo."
    ),
    missed_call=(
        "Hola, intentamos llamarte hace un momento pero no pudimos comunicarnos contigo. Si "
        "te resulta más cómodo, responde aquí y te ayudamos."
    ),
    media_notice=(
        "¡Gracias! Aquí solo puedo leer mensajes de texto. ¿Podrías escribir tu pregunta?"
    ),
    optout_confirmation=(
        "No recibirás más mensajes nuestros por aquí. Responde ALTA si quieres volver a recibirlos."
    ),
    optin_confirmation="¡Hola de nuevo! Volverás a recibir nuestros mensajes por aquí.",
    handoff_notice="¡Gracias! Una persona de nuestro equipo te responderá por aquí en breve.",
    unnamed="de nuevo",
    missed_call_summary="Intentamos llamarte por teléfono.",
)

#: By ``AFTERCALL_LANGUAGE``.
TEXTS: Final[Mapping[str, Texts]] = {"en": ENGLISH, "es": SPANISH}
DEFAULT_LANGUAGE: Final = "en"
