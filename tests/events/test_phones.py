"""Phone identity: E.164 normalisation, WhatsApp addresses, one identity per person.

Plain synchronous tests on values. Hypothesis is not a dependency of the suite, so the
properties (idempotence, identity of normalised forms) run over a seeded random sample.
"""

from __future__ import annotations

import random

import pytest

from events.phones import (
    WHATSAPP_PREFIX,
    InvalidPhone,
    identity_phone,
    normalise_phone,
    same_person,
    whatsapp_address,
)

# -- normalise_phone: the contract actors/whatsapp_rules.py had -----------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "+15551234567",
        "15551234567",
        "whatsapp:+15551234567",
        "WhatsApp:+15551234567",
        "WHATSAPP:+15551234567",
        "whatsapp:+1 (555) 123-4567",
        " +1 555.123.4567 ",
        "\t+1-555-123-4567\n",
        "0015551234567",
        "00 1 555 123 4567",
        "+1/555/1234567",
    ],
)
def test_normalise_phone_accepts_the_usual_spellings(raw: str) -> None:
    assert normalise_phone(raw) == "+15551234567"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+525512345678", "+525512345678"),
        ("whatsapp:+5215512345678", "+5215512345678"),  # the digits given, not the identity
        ("+55 61 98765-4321", "+5561987654321"),
        ("+54 9 11 5874-9895", "+5491158749895"),
        ("+44 20 7946 0018", "+442079460018"),
        ("+1234567", "+1234567"),  # 7 digits, the shortest E.164 accepted
        ("+123456789012345", "+123456789012345"),  # 15 digits, the longest
    ],
)
def test_normalise_phone_keeps_the_digits_given(raw: str, expected: str) -> None:
    assert normalise_phone(raw) == expected


@pytest.mark.parametrize("raw", ["+15551234567", "+15550001111", "+15550002222", "+15559999999"])
def test_fictional_555_numbers_are_numbers(raw: str) -> None:
    # libphonenumber calls these invalid (unassigned); the sandbox and the tests live on them.
    assert normalise_phone(raw) == raw
    assert identity_phone(raw) == raw
    assert whatsapp_address(raw) == WHATSAPP_PREFIX + raw


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "not a phone number"),
        ("   ", "not a phone number"),
        ("whatsapp:", "not a phone number"),
        ("+", "not a phone number"),
        ("00", "not a phone number"),
        ("+1555abc4567", "not a phone number"),
        ("1-800-FLOWERS", "not a phone number"),  # no vanity letters: digits only
        ("+1 555 123 4567 ext. 12", "not a phone number"),  # no extensions
        ("++15551234567", "not a phone number"),
        ("+1_555_123_4567", "not a phone number"),
        ("sms:+15551234567", "not a phone number"),
        ("+١٥٥٥١٢٣٤٥٦٧", "not a phone number"),  # Arabic-Indic digits are digits, not ASCII
        (
            "+" + "".join(chr(0xFF10 + int(d)) for d in "15551234567"),
            "not a phone number",
        ),  # fullwidth
        ("0612345678", "no country code"),
        ("+0612345678", "no country code"),
        ("000612345678", "no country code"),
        ("+12345", "7 to 15 digits"),
        ("+123456", "7 to 15 digits"),
        ("+1234567890123456", "7 to 15 digits"),
    ],
)
def test_normalise_phone_refuses_with_a_reason(raw: str, why: str) -> None:
    with pytest.raises(InvalidPhone, match=why) as caught:
        normalise_phone(raw)
    message = str(caught.value)
    assert repr(raw) in message, "the message names the input"
    assert "+15551234567" in message or "7 to 15 digits" in message, "and what was expected"


def test_the_length_refusal_says_how_many_digits_it_saw() -> None:
    with pytest.raises(InvalidPhone, match="'\\+12345' has 5 digits"):
        normalise_phone("+12345")


@pytest.mark.parametrize("raw", [None, 15551234567, b"+15551234567"])
def test_normalise_phone_refuses_what_is_not_a_string(raw: object) -> None:
    with pytest.raises(InvalidPhone, match="must be a string"):
        normalise_phone(raw)  # type: ignore[arg-type]


def test_invalid_phone_is_a_value_error() -> None:
    # Callers that catch ValueError (form parsing, the CLI) keep catching it.
    assert issubclass(InvalidPhone, ValueError)


# -- whatsapp_address --------------------------------------------------------------------


def test_whatsapp_address_is_the_prefixed_e164() -> None:
    assert whatsapp_address("1 555 123 4567") == "whatsapp:+15551234567"
    assert whatsapp_address("whatsapp:+15551234567") == "whatsapp:+15551234567"


@pytest.mark.parametrize(
    "written_from", ["whatsapp:+5215512345678", "whatsapp:+556187654321", "+5215512345678"]
)
def test_whatsapp_address_keeps_the_form_the_person_wrote_from(written_from: str) -> None:
    # The reply goes to the account that exists, not to its identity form.
    assert whatsapp_address(written_from) == WHATSAPP_PREFIX + normalise_phone(written_from)
    assert whatsapp_address(written_from) != WHATSAPP_PREFIX + identity_phone(written_from)


def test_whatsapp_address_refuses_what_normalise_refuses() -> None:
    with pytest.raises(InvalidPhone, match="no country code"):
        whatsapp_address("0612345678")


# -- identity_phone: Mexico --------------------------------------------------------------

MX_CALLED = "+525512345678"


@pytest.mark.parametrize(
    "form",
    [
        MX_CALLED,  # the number the agent called
        "whatsapp:+5215512345678",  # Twilio's From for an account registered with the 1
        "whatsapp:+525512345678",  # an account registered without it
        "+52 1 55 1234 5678",
        "+52 (55) 1234-5678",
        "00 52 1 55 1234 5678",
        "5215512345678",
    ],
)
def test_every_mexican_form_is_the_called_number(form: str) -> None:
    assert identity_phone(form) == MX_CALLED


def test_mexican_landline_or_any_52_plus_10_digits_is_its_own_identity() -> None:
    # Fixed and mobile are indistinguishable since 2019 and need not be told apart.
    assert identity_phone("+523312345678") == "+523312345678"  # Guadalajara
    assert identity_phone("+529981234567") == "+529981234567"  # Cancún


@pytest.mark.parametrize(
    "raw",
    [
        "+52123456789",  # 52 + 9 digits: not the legacy form (too short), kept
        "+521551234567",  # 52 + 1 + 9 digits: 12 digits, kept
        "+52155123456789",  # 52 + 1 + 11 digits: 14 digits, kept
    ],
)
def test_only_exactly_52_1_and_10_digits_is_the_legacy_mexican_form(raw: str) -> None:
    assert identity_phone(raw) == normalise_phone(raw)


def test_a_521_number_of_another_country_code_is_not_touched() -> None:
    # +1 521 ... is a NANP number that merely contains "521".
    assert identity_phone("+15215512345") == "+15215512345"


# -- identity_phone: Brazil --------------------------------------------------------------


@pytest.mark.parametrize(
    ("whatsapp_from", "called"),
    [
        ("whatsapp:+556187654321", "+5561987654321"),  # Brasília, registered before the 9
        ("whatsapp:+558188776655", "+5581988776655"),  # Recife
        ("whatsapp:+559299887766", "+5592999887766"),  # Manaus, first digit 9
        ("whatsapp:+556666554433", "+5566966554433"),  # Mato Grosso, first digit 6
        ("whatsapp:+551187654321", "+5511987654321"),  # São Paulo: old IDs occur there too
        ("+55 (21) 8765-4321", "+5521987654321"),
    ],
)
def test_a_legacy_brazilian_mobile_is_the_called_ninth_digit_number(
    whatsapp_from: str, called: str
) -> None:
    assert identity_phone(whatsapp_from) == called
    assert identity_phone(called) == called
    assert same_person(whatsapp_from, called)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("+556132345678", "a Brasília fixed line (first digit 2-5)"),
        ("+551155554444", "a São Paulo fixed line"),
        ("+552124445555", "a Rio fixed line"),
        ("+556177654321", "an 8-digit 7 number is still assigned (SME), not a legacy mobile"),
        ("+552087654321", "area code 20 does not exist"),
        ("+551107654321", "a first digit 0 was never a mobile"),
        ("+551117654321", "a first digit 1 was never a mobile"),
        ("+5561987654321", "already the nine-digit form"),
        ("+558000464636", "a 0800 toll-free number"),
    ],
)
def test_other_brazilian_numbers_are_their_own_identity(raw: str, why: str) -> None:
    assert identity_phone(raw) == raw, why


# -- identity_phone: what is not handled ------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "+5491158749895",  # Argentina, mobile: the called form is already WhatsApp's form
        "+541158749895",  # Argentina without the 9: a fixed-line form; not aliased
        "+54111558749895",  # domestic 15 kept: not rewritten to +549
        "+22545123456",  # Côte d'Ivoire, 8-digit legacy form: unconfirmed, not aliased
        "+2250545123456",
        "+79161234567",  # Russia
        "+447911123456",  # United Kingdom
        "+4915112345678",  # Germany
        "+919876543210",  # India
    ],
)
def test_numbers_without_a_confirmed_rule_are_their_own_identity(raw: str) -> None:
    assert identity_phone(raw) == raw


def test_argentine_forms_with_and_without_the_9_are_different_people() -> None:
    assert not same_person("+5491158749895", "+541158749895")


# -- identity_phone and same_person: properties ------------------------------------------


def test_identity_refuses_what_normalise_refuses() -> None:
    with pytest.raises(InvalidPhone, match="no country code"):
        identity_phone("0612345678")
    with pytest.raises(InvalidPhone, match="not a phone number"):
        same_person("+15551234567", "not a number")


def test_same_person_compares_identities() -> None:
    assert same_person("whatsapp:+5215512345678", "+52 55 1234 5678")
    assert same_person("whatsapp:+1 (555) 123-4567", "+15551234567")
    assert not same_person("+15551234567", "+15550001111")
    assert not same_person("+525512345678", "+525512345679")


def _random_numbers(count: int, seed: int = 20260301) -> list[str]:
    """Numbers in every shape the rules look at, and around them."""
    rng = random.Random(seed)
    shapes = [
        lambda: "+1555" + _digits(rng, 7),
        lambda: "+521" + _digits(rng, 10),
        lambda: "+52" + rng.choice("23456789") + _digits(rng, 9),
        lambda: "+55" + _digits(rng, 10),
        lambda: "+55" + _digits(rng, 11),
        lambda: "+54" + rng.choice(["", "9"]) + _digits(rng, 10),
        lambda: "+" + rng.choice("123456789") + _digits(rng, rng.randint(6, 14)),
    ]
    return [rng.choice(shapes)() for _ in range(count)]


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


@pytest.mark.parametrize("raw", _random_numbers(400))
def test_identity_is_idempotent_e164_and_at_most_one_digit_away(raw: str) -> None:
    identity = identity_phone(raw)
    assert identity_phone(identity) == identity
    assert normalise_phone(identity) == identity
    assert abs(len(identity) - len(normalise_phone(raw))) <= 1
    assert identity[:3] == normalise_phone(raw)[:3], "the country code never changes"
    assert same_person(raw, identity)


@pytest.mark.parametrize("raw", _random_numbers(100, seed=7))
def test_spelling_does_not_change_identity(raw: str) -> None:
    digits = raw[1:]
    spaced = " ".join(digits[i : i + 3] for i in range(0, len(digits), 3))
    for spelling in (digits, "00" + digits, f"whatsapp:+{spaced}", f" +{digits} "):
        assert identity_phone(spelling) == identity_phone(raw)
