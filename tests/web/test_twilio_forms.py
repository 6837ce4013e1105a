"""Parsing Twilio's webhook forms from the raw body, and checking their signature."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from clients.twilio.forms import (
    MAX_FIELDS,
    MAX_VALUE,
    Form,
    FormError,
    delivery_status,
    message_received,
    parse_form,
    signature_is_valid,
)
from sandbox.twilio._protocol import inbound_params, sign

URL = "https://aftercall.example/webhooks/twilio/whatsapp"
TOKEN = "12345678901234567890123456789012"
NOW = datetime(2026, 12, 4, tzinfo=UTC)


def test_decodes_as_twilio_encodes() -> None:
    form = parse_form(b"Body=caf%C3%A9+au+lait&ProfileName=Ana+%26+Bo&Empty=&Bare")
    assert form.get("Body") == "café au lait"
    assert form.get("ProfileName") == "Ana & Bo"
    assert form.get("Empty") == ""
    assert form.get("Bare") == ""
    assert form.get("Missing") is None


def test_keeps_every_value_of_a_repeated_name() -> None:
    form = parse_form(b"MediaUrl=a&MediaUrl=b&Body=x")
    assert form.items["MediaUrl"] == ["a", "b"]


def test_a_form_the_stand_in_signed_is_valid_after_parsing() -> None:
    params = inbound_params(
        sid="SM" + "a" * 32,
        account_sid="AC" + "b" * 32,
        from_phone="+15551234567",
        to="whatsapp:+14155238886",
        body="Grüße: 50% off? yes & no + more",
        profile_name="Zoë",
    )
    signature = sign(TOKEN, URL, params)
    form = parse_form(urlencode(params).encode())
    assert {name: values[0] for name, values in form.items.items()} == params
    assert signature_is_valid(TOKEN, URL, form, signature)
    assert not signature_is_valid(TOKEN, URL + "?x=1", form, signature)


def test_a_body_that_is_not_utf8_is_a_form_error() -> None:
    with pytest.raises(FormError, match="not UTF-8"):
        parse_form(b"Body=\xff\xfe")


def test_too_many_fields_is_a_form_error() -> None:
    body = "&".join(f"F{i}=x" for i in range(MAX_FIELDS + 1)).encode()
    with pytest.raises(FormError, match=f"at most {MAX_FIELDS} fields"):
        parse_form(body)
    assert len(parse_form(body.rsplit(b"&", 1)[0]).items) == MAX_FIELDS


def test_a_signature_made_for_the_url_with_its_port_is_valid_too() -> None:
    """Twilio signs some URLs with the port and some without; both are accepted."""
    params = {"Body": "hi", "MessageSid": "SM" + "c" * 32}
    form = parse_form(urlencode(params).encode())
    with_port = sign(TOKEN, "https://aftercall.example:443/webhooks/twilio/whatsapp", params)
    assert signature_is_valid(TOKEN, URL, form, with_port)
    assert not signature_is_valid(TOKEN, URL, form, sign("x" * 32, URL, params))


def _status_form(**fields: str) -> Form:
    base = {
        "MessageSid": "SM" + "a" * 32,
        "MessageStatus": "undelivered",
        "To": "whatsapp:+15551230001",
    }
    return parse_form(urlencode({**base, **fields}).encode())


@pytest.mark.parametrize("code", ["99999999999999999999999", "1000000", "9" * 1000])
def test_an_error_code_out_of_twilio_range_is_refused(code: str) -> None:
    # Recorded once, such a code stopped two read models for good (an int64 column).
    with pytest.raises(FormError, match="ErrorCode must be a Twilio error code"):
        delivery_status(_status_form(ErrorCode=code), NOW)


def test_a_twilio_error_code_is_kept_and_a_word_goes_to_the_message() -> None:
    _, status = delivery_status(_status_form(ErrorCode="63016"), NOW)
    assert status.error_code == 63016
    _, status = delivery_status(_status_form(ErrorCode="InvalidSandboxRequest"), NOW)
    assert (status.error_code, status.error_message) == (None, "InvalidSandboxRequest")


@pytest.mark.parametrize("count", ["1_0", " 1", "\u0661", "11", "-1", "9" * 50])
def test_num_media_is_ascii_digits_within_the_limit(count: str) -> None:
    form = parse_form(
        urlencode(
            {"MessageSid": "SM" + "b" * 32, "From": "whatsapp:+15551230001", "NumMedia": count}
        ).encode()
    )
    with pytest.raises(FormError, match="NumMedia must be a whole number"):
        message_received(form, NOW)


def test_a_nul_or_an_overlong_value_is_a_form_error() -> None:
    # PostgreSQL's jsonb cannot store a NUL; no Twilio field is longer than a body.
    with pytest.raises(FormError, match="NUL"):
        parse_form(b"Body=a%00b")
    with pytest.raises(FormError, match=f"the limit is {MAX_VALUE}"):
        parse_form(b"ErrorMessage=" + b"x" * (MAX_VALUE + 1))
