"""Twilio's JSON on values: messages, errors, and which listed message an intent meant."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from clients.twilio.resources import (
    MalformedResponse,
    SentMessage,
    date_sent_filter,
    message_matches,
    parse_error,
    parse_message,
)

NOW = datetime(2026, 3, 1, 12, 0, 30, 500_000, tzinfo=UTC)

# -- Twilio JSON -------------------------------------------------------------------------

CREATED: dict[str, object] = {
    "account_sid": "AC" + "a" * 32,
    "api_version": "2010-04-01",
    "body": "Hello! 👍",
    "date_created": "Thu, 24 Aug 2023 05:01:45 +0000",
    "date_sent": None,
    "date_updated": "Thu, 24 Aug 2023 05:01:45 +0000",
    "direction": "outbound-api",
    "error_code": None,
    "error_message": None,
    "from": "whatsapp:+14155238886",
    "num_media": "0",
    "num_segments": "1",
    "price": None,
    "sid": "SM" + "a" * 32,
    "status": "queued",
    "to": "whatsapp:+15551234567",
}


def test_parse_message() -> None:
    message = parse_message(CREATED)
    assert message == SentMessage(
        sid="SM" + "a" * 32,
        status="queued",
        to="+15551234567",
        body="Hello! 👍",
        date_created=datetime(2023, 8, 24, 5, 1, 45, tzinfo=UTC),
        error_code=None,
    )


def test_parse_message_with_an_error_code() -> None:
    failed = {**CREATED, "status": "failed", "error_code": 63016, "error_message": "window"}
    message = parse_message(failed)
    assert (message.error_code, message.error_message) == (63016, "window")
    assert parse_message({**CREATED, "error_code": "63016"}).error_code == 63016


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {**CREATED, "sid": None},
        {**CREATED, "status": 3},
        {**CREATED, "to": None},
        {**CREATED, "date_created": "yesterday"},
        {**CREATED, "error_code": "x"},
        {**CREATED, "error_code": True},
        {**CREATED, "body": 5},
    ],
)
def test_parse_message_refuses_what_is_not_a_message(payload: object) -> None:
    with pytest.raises(MalformedResponse):
        parse_message(payload)


def test_parse_error_legacy_shape() -> None:
    text = json.dumps(
        {
            "code": 21211,
            "message": "The 'To' number 5551234567 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400,
        }
    )
    info = parse_error(400, text)
    assert info.code == 21211
    assert "not a valid phone number" in info.message
    assert info.more_info == "https://www.twilio.com/docs/errors/21211"


def test_parse_error_problem_details_and_garbage() -> None:
    info = parse_error(400, json.dumps({"type": "https://x/e", "title": "Bad", "code": 1}))
    assert (info.code, info.message, info.more_info) == (1, "Bad", "https://x/e")
    assert parse_error(502, "<html>\n  Bad   gateway</html>").message == (
        "HTTP 502: <html> Bad gateway</html>"
    )
    assert parse_error(500, "").message == "HTTP 500"
    assert len(parse_error(500, "x" * 10_000).message) < 250
    assert parse_error(400, json.dumps({"code": "21211"})).code is None


# -- what counts as the message an intent meant ------------------------------------------


def _listed(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        **CREATED,
        "date_created": "Sun, 01 Mar 2026 12:00:30 +0000",
        "body": "Hi there.",
    }
    base.update(changes)
    return base


def _matches(payload: dict[str, object], **kwargs: object) -> bool:
    options: dict[str, object] = {
        "to_phone": "+15551234567",
        "from_address": "+14155238886",
        "since": NOW,
    }
    options.update(kwargs)
    return message_matches(payload, **options)  # type: ignore[arg-type]


def test_matches_same_phone_sender_body_and_second() -> None:
    # created 12:00:30, since 12:00:30.5: Twilio's whole seconds must not hide it
    assert _matches(_listed(), body="Hi there.")
    assert _matches(_listed(), body="  Hi there.\r\n")
    assert _matches(_listed())  # no body given: any outbound message in the window


@pytest.mark.parametrize(
    ("payload", "kwargs"),
    [
        (_listed(), {"body": "Hi there!"}),
        (_listed(to="whatsapp:+15550000000"), {}),
        (_listed(**{"from": "whatsapp:+15550000000"}), {}),
        (_listed(direction="inbound"), {}),
        (_listed(date_created="Sun, 01 Mar 2026 12:00:29 +0000"), {}),
        (_listed(date_created=None), {}),
        (_listed(date_created="garbage"), {}),
        (_listed(body=None), {"body": "Hi there."}),
    ],
)
def test_does_not_match(payload: dict[str, object], kwargs: dict[str, object]) -> None:
    assert not _matches(payload, **kwargs)


def test_template_matches_by_content_sid_when_listed_else_by_rendered_body() -> None:
    sid = "HX" + "b" * 32
    assert _matches(_listed(content_sid=sid), content_sid=sid, body="ignored")
    assert not _matches(_listed(content_sid="HX" + "c" * 32), content_sid=sid)
    assert _matches(_listed(), content_sid=sid)
    assert _matches(_listed(), content_sid=sid, body="Hi there.")
    assert not _matches(_listed(), content_sid=sid, body="Other text")


def test_since_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _matches(_listed(), since=datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        date_sent_filter(datetime(2026, 3, 1))


def test_date_sent_filter_is_the_utc_day() -> None:
    east = datetime(2026, 3, 2, 0, 30, tzinfo=UTC) + timedelta(hours=0)
    assert date_sent_filter(east) == "2026-03-02"

    tokyo = datetime(2026, 3, 2, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert date_sent_filter(tokyo) == "2026-03-01"
