"""Parsing Twilio's webhook forms from the raw body, and checking their signature."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from clients.twilio.forms import MAX_FIELDS, FormError, parse_form, signature_is_valid
from sandbox.twilio._protocol import inbound_params, sign

URL = "https://aftercall.example/webhooks/twilio/whatsapp"
TOKEN = "12345678901234567890123456789012"


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
