"""Phone identity: one E.164 form per number, and one identity per person across channels.

The phone number is an actor's identity and its stream name (``phone-+E164``), so every layer
(webhooks, actors, projections, the CLI) must turn what it receives into the same string. This
module is the bottom layer: it imports nothing from this repository, and nothing here does I/O.

Three functions, three questions:

- `normalise_phone`: *which number is this?* The E.164 spelling of exactly the digits given
  (``whatsapp:+1 (555) 123-4567`` -> ``+15551234567``). It never adds, drops or guesses a
  digit: a number without a country code is refused, not guessed.
- `identity_phone`: *which person is this?* The E.164 form the actor is keyed by. It differs
  from `normalise_phone` only where WhatsApp is documented to know a person under another form
  of the number that was called (below). Use it to find the actor and name the stream.
- `whatsapp_address`: *where does the message go?* ``whatsapp:+E164`` of the number given, never
  of its identity: a reply goes to the address the person wrote from (the actor stores it),
  because that is the WhatsApp account that exists; its identity form may not be one.

Canonical form: the *called* form, i.e. the number as the current national numbering plan
dials it. The call comes first, so the actor and its stream already exist under that form when
the first WhatsApp message arrives; and it is the form the current plan assigns, which the
agent must dial anyway. A legacy form WhatsApp still carries for an old account maps onto it,
never the other way.

Countries handled (WhatsApp ``From`` differs from the called number)
----------------------------------------------------------------------

Mexico (+52). Since 3 August 2019 every Mexican number is dialled as +52 and 10 digits; the
``1`` that used to follow +52 for mobiles is gone from the numbering plan, so a 13-digit
``+521`` + 10 digits cannot be a current number. WhatsApp still keys many accounts by the old
form, and Twilio users report their replies arriving from ``whatsapp:+5215512345678`` after a
conversation started to ``+525512345678``. So ``+521`` + 10 digits -> ``+52`` + 10 digits.
Mobile and fixed-line numbers are not distinguishable in the current plan (libphonenumber types
them FIXED_LINE_OR_MOBILE) and need not be: the rule keys on the length, and ``+52`` + 10 digits
(a landline's WhatsApp Business account, or a newer mobile account) is left alone.

- https://www.twilio.com/guidelines/mx/voice (the 2019 change: +52 + 1 + 10 -> +52 + 10)
- https://faq.whatsapp.com/640432094208718 (WhatsApp still asks for "1" after +52)
- https://github.com/chatwoot/chatwoot/issues/14048 and
  https://github.com/chatwoot/chatwoot/pull/14174 (Twilio inbound ``whatsapp:+521...`` for a
  contact reached at ``+52...``; normalised by dropping the 1)
- https://support.gupshup.io/hc/en-us/articles/4407840924953 (Brazil 9 / Mexico 1 WhatsApp IDs)

Brazil (+55). ANATEL added a ninth digit, a leading ``9``, to every mobile number (announced
2010, rolled out by area until 2016): ``+55 DD 8765-4321`` became ``+55 DD 98765-4321``, and
only the 9-digit form is dialable now. Accounts registered before their area migrated keep the
8-digit WhatsApp ID, so a person called at ``+55 DD 9XXXXXXXX`` may write from
``whatsapp:+55DDXXXXXXXX``. The legacy form is mapped back (the 9 re-inserted) only when:
its first subscriber digit is 6-9 (the pre-2012 mobile range; fixed lines begin with 2-5),
libphonenumber says the 8-digit form is *not* a valid number today, and the 9-digit form *is*
a valid mobile. The last two checks are where libphonenumber earns its place: they validate
the area code (DDD) without a hard-coded list, keep fixed lines (``+55 61 3234-5678``) as
they are, and keep 8-digit numbers still assigned today (``+55 DD 7XXX-XXXX``, SME trunked
radio, a valid mobile in libphonenumber) out of the mapping, since merging those could join
two subscribers. The area lists some vendors give (11-19, 21, 22, 24, 27, 28 migrated) are
not used: old IDs are reported there too, and the mapping is safe in every area.

- https://support.gupshup.io/hc/en-us/articles/4407840924953
- https://help.zoho.com/portal/en/kb/marketing-automation-2-0/faqs/marketing-campaigns/whatsapp/articles/what-is-the-reason-for-inconsistencies-in-mobile-numbers-and-their-whatsapp-ids-in-brazil-and-mexico
- https://docs.360dialog.com/docs/useful/number-registration-issues/number-formats
- https://github.com/chatwoot/chatwoot/pull/6222 (fixes chatwoot issue 5840) and
  https://github.com/chatwoot/chatwoot/pull/14264 (Brazil numbers arrive with or without the 9)
- https://github.com/wwebjs/whatsapp-web.js/issues/596 (old IDs outside the "migrated" areas)
- https://github.com/google/libphonenumber/blob/master/resources/PhoneNumberMetadata.xml
  (BR fixed line ``DD[2-5]\\d{7}``, mobile ``DD(?:7|9\\d)\\d{7}``)

Found and not handled
---------------------

Argentina (+54). WhatsApp asks for ``+54 9`` + area code + number without the ``15``
(https://faq.whatsapp.com/640432094208718), which is also how an Argentine mobile is dialled
from abroad, so the called form and the WhatsApp form agree and there is nothing to map.
Reports that an account can appear *without* the 9 (``+54 11 5874 9895``;
https://docs.voxys.ai/hc/voxys-help/articles/1779957009-inconsistencies-for-whats_app-numbers-in-brazil-and-argentina,
Cloud API test-mode allow-lists in https://github.com/chatwoot/chatwoot/issues/11053) are not
documented by Meta or Twilio, and ``+54`` without the 9 is also a valid fixed-line form;
chatwoot deliberately does not alias the two
(https://github.com/chatwoot/chatwoot/blob/develop/app/services/whatsapp/phone_normalizers/argentina_phone_normalizer.rb).
Not handled: ``+54...`` and ``+549...`` are different identities. A number stored with the
domestic ``15`` (``+54 11 15 ...``) is not rewritten either: that is not the international
form, so it is fixed where numbers enter the system, not guessed here.

Côte d'Ivoire (+225, 8 -> 10 digits in 2021) and other "remove the local prefix" rules appear
only in vendor pages (https://support.whapi.cloud/help-desk/faq/specifics-of-sending-messages-to-numbers-of-different-countries),
unconfirmed by Meta, Twilio or the regulators: not handled. Russia/Kazakhstan "8 vs 7" is a
domestic trunk prefix, i.e. a number without a country code, which `normalise_phone` refuses.

Why `normalise_phone` does not use libphonenumber: it adds nothing to the contract and costs a
lot on a path every webhook takes. Parsing needs a leading ``+`` or a region (``15551234567``
would be refused or guessed), accepts what the contract refuses (``+1-800-FLOWERS`` becomes
``+18003569377``; ``ext. 12`` is dropped into an extension field), silently rewrites digits
(``+54 11 15...`` -> ``+54 9 11...``), and its validity check refuses the fictional ``+1555``
numbers the sandbox and tests use. Measured (CPython 3.11, best of 5): `normalise_phone` takes
0.6 to 1.1 us a call, `identity_phone` 0.6 to 1.4 us (about 10 us on the rare Brazilian legacy
path, which asks libphonenumber), while ``phonenumbers.parse`` + ``format_number`` alone takes 9
to 11 us and adding ``is_valid_number`` about 30 us.
"""

from __future__ import annotations

import re
from typing import Final

import phonenumbers

__all__ = [
    "WHATSAPP_PREFIX",
    "InvalidPhone",
    "identity_phone",
    "normalise_phone",
    "same_person",
    "whatsapp_address",
]

#: The prefix Twilio puts on WhatsApp addresses (``whatsapp:+15551234567``).
WHATSAPP_PREFIX: Final = "whatsapp:"

# Separators people and CRMs put inside phone numbers; anything else is refused.
_PHONE_NOISE: Final = re.compile(r"[\s\-.()/]")
_MIN_DIGITS: Final = 7
_MAX_DIGITS: Final = 15

# Mexico: "+52" "1" + 10 digits, the pre-August-2019 international form of a mobile.
_MX_LEGACY_PREFIX: Final = "+521"
_MX_LEGACY_LENGTH: Final = len("+5215512345678")
# Brazil: "+55" DD + 8 digits, a mobile from before the ninth digit (first digit 6-9).
_BR_PREFIX: Final = "+55"
_BR_LEGACY_LENGTH: Final = len("+556187654321")
_BR_LEGACY_MOBILE_FIRST_DIGITS: Final = frozenset("6789")


class InvalidPhone(ValueError):
    """A phone number that cannot be turned into E.164 (``+`` and 7 to 15 digits)."""


def normalise_phone(raw: str) -> str:
    """Return the E.164 form (``+15551234567``) of a phone number or WhatsApp address.

    Accepts ``whatsapp:+1 (555) 123-4567``, ``+15551234567``, ``15551234567`` and the
    international ``00`` prefix; spaces, dashes, dots, slashes and parentheses are separators.
    A number without a country code (``0612345678``) cannot be made E.164 without guessing the
    country, so it is refused rather than guessed. Whether the number is assigned is not
    checked: fictional ``+1555`` numbers are numbers, and numbering plans change faster than
    any copy of them.

    Args:
        raw: the number as received (a webhook field, a CRM cell, a CLI argument).

    Returns:
        ``+`` and 7 to 15 ASCII digits, the first of them not ``0``.

    Raises:
        InvalidPhone: with the offending input and what was expected.
    """
    if not isinstance(raw, str):
        raise InvalidPhone(f"phone number must be a string, got {type(raw).__name__}")
    text = raw.strip()
    if text[: len(WHATSAPP_PREFIX)].lower() == WHATSAPP_PREFIX:
        text = text[len(WHATSAPP_PREFIX) :]
    text = _PHONE_NOISE.sub("", text)
    if text.startswith("+"):
        digits = text[1:]
    elif text.startswith("00"):
        digits = text[2:]
    else:
        digits = text
    if not digits.isascii() or not digits.isdigit():
        raise InvalidPhone(
            f"{raw!r} is not a phone number: expected E.164 like +15551234567 "
            "(digits, an optional leading + and separators only)"
        )
    if digits.startswith("0"):
        raise InvalidPhone(f"{raw!r} has no country code: expected E.164 like +15551234567")
    if not _MIN_DIGITS <= len(digits) <= _MAX_DIGITS:
        raise InvalidPhone(
            f"{raw!r} has {len(digits)} digits: E.164 numbers have 7 to 15 digits "
            "including the country code"
        )
    return "+" + digits


def identity_phone(raw: str) -> str:
    """Return the E.164 number that identifies the person behind ``raw``, on any channel.

    This is the actor's key and the stream name's suffix. It is `normalise_phone` except for
    the legacy forms WhatsApp is documented to keep for some accounts (see the module
    docstring), which map to the number as it is called today:

    - Mexico: ``+521`` + 10 digits -> ``+52`` + 10 digits;
    - Brazil: ``+55`` DD + 8-digit legacy mobile -> ``+55`` DD ``9`` + 8 digits.

    Every other number, fictional ``+1555`` ones included, is its own identity. The function
    is idempotent (an identity is its own identity) and never makes a number up: it only
    re-inserts or removes the one digit a numbering-plan change moved.

    Args:
        raw: a phone number or WhatsApp address in any form `normalise_phone` accepts.

    Returns:
        The identity, in E.164.

    Raises:
        InvalidPhone: ``raw`` is not a phone number (see `normalise_phone`).
    """
    phone = normalise_phone(raw)
    if len(phone) == _MX_LEGACY_LENGTH and phone.startswith(_MX_LEGACY_PREFIX):
        return "+52" + phone[len(_MX_LEGACY_PREFIX) :]
    if (
        len(phone) == _BR_LEGACY_LENGTH
        and phone.startswith(_BR_PREFIX)
        and phone[5] in _BR_LEGACY_MOBILE_FIRST_DIGITS
    ):
        return _brazil_ninth_digit(phone)
    return phone


def same_person(a: str, b: str) -> bool:
    """Whether two numbers or WhatsApp addresses reach the same person.

    For checks such as "does this inbound ``From`` belong to the actor that placed the call?"
    where both sides are at hand; to look an actor up, key by `identity_phone` instead.

    Raises:
        InvalidPhone: either side is not a phone number.
    """
    return identity_phone(a) == identity_phone(b)


def whatsapp_address(phone: str) -> str:
    """``whatsapp:+E164``, the address form Twilio wants in ``To`` and ``From``.

    The number is kept as given (normalised, not mapped to its identity): a reply must go to
    the form the person wrote from, which is the WhatsApp account that exists.

    Raises:
        InvalidPhone: ``phone`` is not a phone number.
    """
    return WHATSAPP_PREFIX + normalise_phone(phone)


def _brazil_ninth_digit(phone: str) -> str:
    """``+55 DD 9XXXXXXXX`` for a legacy ``+55 DD XXXXXXXX`` mobile, else ``phone`` unchanged.

    Mapped only if the 8-digit form is not a valid number today and the 9-digit form is a
    valid mobile, so fixed lines, 8-digit numbers still assigned and unknown area codes keep
    their own identity.
    """
    area, subscriber = phone[3:5], phone[5:]
    legacy = phonenumbers.PhoneNumber(country_code=55, national_number=int(area + subscriber))
    if phonenumbers.is_valid_number(legacy):
        return phone
    current = phonenumbers.PhoneNumber(
        country_code=55, national_number=int(area + "9" + subscriber)
    )
    if phonenumbers.number_type(current) != phonenumbers.PhoneNumberType.MOBILE:
        return phone
    return f"{_BR_PREFIX}{area}9{subscriber}"
