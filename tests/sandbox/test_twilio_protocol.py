"""The stand-in's protocol functions against the reference's vectors and rules (no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from sandbox.twilio import (
    ApiError,
    CreateRequest,
    ListQuery,
    MessageRecord,
    Template,
    TwimlError,
    check_create,
    e164,
    inbound_params,
    message_json,
    page_json,
    parse_twiml,
    render_template,
    sign,
    status_params,
    window_open,
)

DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675310",
    "Digits": "1234",
    "From": "+14158675310",
    "To": "+18005551212",
}
LIB_PARAMS = {**DOC_PARAMS, "Caller": "+14158675309", "From": "+14158675309"}
LIB_URL = "mycompany.com{port}/myapp.php?foo=1&bar=2"


@pytest.mark.parametrize(
    ("url", "params", "expected"),
    [
        # Twilio's security documentation.
        (
            "https://example.com/myapp.php?foo=1&bar=2",
            DOC_PARAMS,
            "L/OH5YylLD5NRKLltdqwSvS0BnU=",
        ),
        # twilio-python's own unit tests.
        ("https://" + LIB_URL.format(port=""), LIB_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("https://" + LIB_URL.format(port=":443"), LIB_PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w="),
        ("http://" + LIB_URL.format(port=":80"), LIB_PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4="),
        ("http://" + LIB_URL.format(port=":1234"), LIB_PARAMS, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
        (
            "https://"
            + LIB_URL.format(port="")
            + "&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620",
            {},
            "a9nBmqA0ju/hNViExpshrM61xv4=",
        ),
    ],
)
def test_signature_matches_twilio_vectors(url: str, params: dict[str, str], expected: str) -> None:
    assert sign("12345", url, params) == expected


def test_signature_with_repeated_values_matches_twilio_vector() -> None:
    params = [
        ("Sid", "CA123"),
        ("SidAccount", "AC123"),
        ("Digits", "5678"),
        ("Digits", "1234"),
        ("Digits", "1234"),
    ]
    url = "https://" + LIB_URL.format(port="")
    assert sign("12345", url, params) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


SENDER = "whatsapp:+14155238886"
TEMPLATE = Template(sid="HX" + "1" * 32, body="Your call on {{1}} at {{2}}: reply here.")


def create(**fields: str | list[str]) -> CreateRequest | ApiError:
    form = {name: value if isinstance(value, list) else [value] for name, value in fields.items()}
    return check_create(form, senders=[SENDER], templates={TEMPLATE.sid: TEMPLATE})


def code_of(result: CreateRequest | ApiError) -> int:
    assert isinstance(result, ApiError), result
    assert result.status == 400
    return result.code


def test_create_accepts_free_text() -> None:
    result = create(To="whatsapp:+15551234567", From=SENDER, Body="hello")
    assert result == CreateRequest(
        to="whatsapp:+15551234567",
        from_=SENDER,
        body="hello",
        media_urls=(),
        content_sid=None,
        messaging_service_sid=None,
        status_callback=None,
    )


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"From": SENDER, "Body": "x"}, 21604),
        ({"To": "whatsapp:+15551234567", "Body": "x"}, 21603),
        ({"To": "whatsapp:5551234567", "From": SENDER, "Body": "x"}, 21211),
        ({"To": "whatsapp:+0123", "From": SENDER, "Body": "x"}, 21211),
        ({"To": "not a number", "From": SENDER, "Body": "x"}, 21211),
        ({"To": "+15551234567", "From": SENDER, "Body": "x"}, 21910),
        ({"To": "whatsapp:+15551234567", "From": "whatsapp:+19995550000", "Body": "x"}, 63007),
        ({"To": "whatsapp:+15551234567", "From": SENDER}, 21602),
        ({"To": "whatsapp:+15551234567", "From": SENDER, "Body": ""}, 21602),
        ({"To": "whatsapp:+15551234567", "From": SENDER, "Body": "x" * 1601}, 21617),
        (
            {"To": "whatsapp:+15551234567", "From": SENDER, "Body": "x", "ContentVariables": "{}"},
            21654,
        ),
        ({"To": "whatsapp:+15551234567", "From": SENDER, "ContentSid": "HX" + "f" * 32}, 21655),
        (
            {
                "To": "whatsapp:+15551234567",
                "From": SENDER,
                "ContentSid": TEMPLATE.sid,
                "ContentVariables": "[1, 2]",
            },
            21656,
        ),
        (
            {
                "To": "whatsapp:+15551234567",
                "From": SENDER,
                "ContentSid": TEMPLATE.sid,
                "ContentVariables": '{"1": "Monday"}',
            },
            21656,
        ),
        (
            {
                "To": "whatsapp:+15551234567",
                "From": SENDER,
                "Body": "x",
                "StatusCallback": "ftp://example.com/x",
            },
            21609,
        ),
    ],
)
def test_create_rejects_with_twilio_codes(fields: dict[str, str], code: int) -> None:
    assert code_of(create(**fields)) == code


def test_body_of_exactly_1600_characters_is_accepted() -> None:
    result = create(To="whatsapp:+15551234567", From=SENDER, Body="x" * 1600)
    assert isinstance(result, CreateRequest)


def test_template_is_rendered_and_is_not_free_form() -> None:
    result = create(
        To="whatsapp:+15551234567",
        From=SENDER,
        ContentSid=TEMPLATE.sid,
        ContentVariables=json.dumps({"1": "12/1", "2": "3pm"}),
    )
    assert isinstance(result, CreateRequest)
    assert result.body == "Your call on 12/1 at 3pm: reply here."
    assert not result.is_free_form


def test_messaging_service_stands_in_for_from() -> None:
    service = "MG" + "a" * 32
    result = create(To="whatsapp:+15551234567", MessagingServiceSid=service, Body="hi")
    assert isinstance(result, CreateRequest)
    assert (result.from_, result.messaging_service_sid) == (SENDER, service)


def test_media_only_message_is_accepted() -> None:
    result = create(
        To="whatsapp:+15551234567", From=SENDER, MediaUrl=["https://a/1.jpg", "https://a/2.jpg"]
    )
    assert isinstance(result, CreateRequest)
    assert result.media_urls == ("https://a/1.jpg", "https://a/2.jpg")


def test_render_template_fills_placeholders_with_spaces_too() -> None:
    assert render_template("{{1}} and {{ 2 }}", {"1": "a", "2": "b"}) == "a and b"
    assert render_template("{{1}}", {}) is None


def test_window_is_24_hours_from_last_inbound() -> None:
    assert not window_open(None, 100.0)
    assert window_open(100.0, 100.0 + 24 * 3600 - 1)
    assert not window_open(100.0, 100.0 + 24 * 3600)


def test_e164_accepts_whatsapp_addresses_only_with_plus() -> None:
    assert e164("whatsapp:+15551234567") == "+15551234567"
    with pytest.raises(ValueError, match=r"E\.164"):
        e164("15551234567")


def record(sid: str, to: str, sent: datetime | None, created: datetime) -> MessageRecord:
    return MessageRecord(
        sid=sid,
        account_sid="AC" + "0" * 32,
        direction="outbound-api",
        from_=SENDER,
        to=to,
        body="b",
        status="sent",
        date_created=created,
        date_updated=created,
        date_sent=sent,
    )


def test_message_json_has_every_documented_key_with_twilio_types() -> None:
    moment = datetime(2023, 8, 24, 5, 1, 45, 123456, tzinfo=UTC)
    payload = message_json(record("SM" + "a" * 32, "whatsapp:+15551234567", None, moment))
    assert set(payload) == {
        "account_sid",
        "api_version",
        "body",
        "date_created",
        "date_sent",
        "date_updated",
        "direction",
        "error_code",
        "error_message",
        "from",
        "messaging_service_sid",
        "num_media",
        "num_segments",
        "price",
        "price_unit",
        "sid",
        "status",
        "subresource_uris",
        "to",
        "uri",
    }
    assert payload["date_created"] == "Thu, 24 Aug 2023 05:01:45 +0000"
    assert payload["date_sent"] is None
    assert (payload["num_media"], payload["num_segments"]) == ("0", "1")
    assert payload["uri"] == f"/2010-04-01/Accounts/AC{'0' * 32}/Messages/SM{'a' * 32}.json"


def sids(page: dict[str, object]) -> list[object]:
    messages = page["messages"]
    assert isinstance(messages, list)
    return [message["sid"] for message in messages]


def test_page_filters_sorts_newest_first_and_links_pages() -> None:
    base = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    records = [
        record(
            f"SM{i:032x}",
            "whatsapp:+15551234567",
            base + timedelta(days=i),
            base + timedelta(days=i),
        )
        for i in range(3)
    ] + [record("SM" + "f" * 32, "whatsapp:+15550000000", base, base)]
    query = ListQuery(to="whatsapp:+15551234567", page_size=2)
    first = page_json(records, query, "AC" + "0" * 32)
    assert sids(first) == [f"SM{2:032x}", f"SM{1:032x}"]
    assert first["next_page_uri"] is not None
    assert "To=whatsapp%3A%2B15551234567" in str(first["next_page_uri"])
    assert first["previous_page_uri"] is None
    second = page_json(records, ListQuery(to="whatsapp:+15551234567", page_size=2, page=1), "AC")
    assert sids(second) == [f"SM{0:032x}"]
    assert second["next_page_uri"] is None
    assert (second["start"], second["end"]) == (2, 2)

    day = page_json(records, ListQuery(date_sent="2024-01-02"), "AC")
    assert sids(day) == [f"SM{1:032x}"]
    after = page_json(records, ListQuery(date_sent_after="2024-01-02T12:00:00Z"), "AC")
    assert len(sids(after)) == 2
    before = page_json(records, ListQuery(date_sent_before="2024-01-01"), "AC")
    assert len(sids(before)) == 2


def test_list_query_rejects_bad_paging_and_dates() -> None:
    assert isinstance(ListQuery.from_args({"PageSize": "0"}), ApiError)
    assert isinstance(ListQuery.from_args({"DateSent": "yesterday"}), ApiError)
    query = ListQuery.from_args({"To": "whatsapp:+1555", "DateSent>": "2024-01-01"})
    assert isinstance(query, ListQuery)
    assert query.date_sent_after == "2024-01-01"


def test_inbound_params_carry_every_whatsapp_field() -> None:
    params = inbound_params(
        sid="MM" + "1" * 32,
        account_sid="AC" + "0" * 32,
        from_phone="+15551234567",
        to=SENDER,
        body="",
        profile_name="Ada",
        media=[("image/jpeg", "https://x/Media/ME1")],
    )
    assert params["From"] == "whatsapp:+15551234567"
    assert params["WaId"] == "15551234567"
    assert params["MessageSid"] == params["SmsSid"] == params["SmsMessageSid"]
    assert (params["NumMedia"], params["MessageType"]) == ("1", "image")
    assert (params["MediaContentType0"], params["MediaUrl0"]) == (
        "image/jpeg",
        "https://x/Media/ME1",
    )
    assert params["SmsStatus"] == "received"
    assert (params["NumSegments"], params["ReferralNumMedia"]) == ("1", "0")
    assert params["ApiVersion"] == "2010-04-01"


def test_status_params_for_read_and_failure() -> None:
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    base = record("SM" + "a" * 32, "whatsapp:+15551234567", moment, moment)
    install = "XE" + "0" * 32
    read = status_params(attrs.evolve(base, status="read"), channel_install_sid=install)
    assert read["EventType"] == "READ"
    assert read["MessageStatus"] == read["SmsStatus"] == "read"
    assert read["ChannelToAddress"] == "+15551234567"
    assert read["ChannelPrefix"] == "whatsapp"
    assert "ErrorCode" not in read
    failed = status_params(
        attrs.evolve(base, status="failed", error_code=63016, error_message="outside window"),
        channel_install_sid=install,
    )
    assert (failed["MessageStatus"], failed["ErrorCode"]) == ("failed", "63016")
    assert "EventType" not in failed


def test_parse_twiml_replies() -> None:
    text = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Message>Hello</Message>'
        "<Message><Body>Second</Body><Media>https://m/1.png</Media></Message></Response>"
    )
    replies = parse_twiml(text)
    assert [(reply.body, reply.media_urls) for reply in replies] == [
        ("Hello", ()),
        ("Second", ("https://m/1.png",)),
    ]
    assert parse_twiml('<?xml version="1.0" encoding="UTF-8"?><Response />') == []
    assert parse_twiml("") == []
    with pytest.raises(TwimlError):
        parse_twiml("not xml")
    with pytest.raises(TwimlError):
        parse_twiml("<html></html>")
