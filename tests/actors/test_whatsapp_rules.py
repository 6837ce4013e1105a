"""The WhatsApp rules on values: phones, bodies, splitting, retry timing, Twilio's JSON."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from actors.whatsapp_rules import (
    BODY_LIMIT,
    EmptyMessage,
    InvalidPhone,
    MalformedResponse,
    MessageTooLong,
    ReplyPlan,
    SentMessage,
    backoff_delay,
    body_length,
    check_body,
    check_content_sid,
    content_variables_json,
    date_sent_filter,
    is_retryable_status,
    message_matches,
    normalise_phone,
    parse_error,
    parse_message,
    parse_retry_after,
    plan_reply,
    split_message,
    whatsapp_address,
)
from events.conversation import Template

NOW = datetime(2026, 3, 1, 12, 0, 30, 500_000, tzinfo=UTC)

# -- phones ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "+15551234567",
        "15551234567",
        "whatsapp:+15551234567",
        "WhatsApp:+15551234567",
        "whatsapp:+1 (555) 123-4567",
        " +1 555.123.4567 ",
        "0015551234567",
        "+1/555/1234567",
    ],
)
def test_normalise_phone_accepts_the_usual_spellings(raw: str) -> None:
    assert normalise_phone(raw) == "+15551234567"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "not a phone number"),
        ("whatsapp:", "not a phone number"),
        ("+1555abc4567", "not a phone number"),
        ("++15551234567", "not a phone number"),
        ("+١٥٥٥١٢٣٤٥٦٧", "not a phone number"),  # Arabic-Indic digits are digits, not ASCII
        ("0612345678", "no country code"),
        ("+12345", "7 to 15 digits"),
        ("+1234567890123456", "7 to 15 digits"),
    ],
)
def test_normalise_phone_refuses_with_a_reason(raw: str, why: str) -> None:
    with pytest.raises(InvalidPhone, match=why) as caught:
        normalise_phone(raw)
    assert repr(raw) in str(caught.value)


def test_whatsapp_address_is_the_prefixed_e164() -> None:
    assert whatsapp_address("1 555 123 4567") == "whatsapp:+15551234567"


# -- bodies ------------------------------------------------------------------------------


def test_body_length_counts_utf16_units() -> None:
    assert body_length("abc") == 3
    assert body_length("é") == 1
    assert body_length("👍") == 2


@pytest.mark.parametrize("body", ["", " ", "\n\t  \r\n", "\u00a0\u2003"])
def test_check_body_refuses_empty_and_whitespace(body: str) -> None:
    with pytest.raises(EmptyMessage):
        check_body(body)


def test_check_body_refuses_over_the_limit_and_accepts_at_it() -> None:
    check_body("x" * BODY_LIMIT)
    with pytest.raises(MessageTooLong, match="1601"):
        check_body("x" * (BODY_LIMIT + 1))
    with pytest.raises(MessageTooLong):
        check_body("👍" * 801)  # 801 characters, 1602 UTF-16 units


# -- splitting ---------------------------------------------------------------------------


def _sentences(count: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    out = []
    for _ in range(count):
        n = rng.randint(4, 25)
        sentence = " ".join(rng.choice(words) for _ in range(n)).capitalize()
        out.append(sentence + rng.choice([".", "!", "?", "…", '."']))
    return " ".join(out)


def _assert_parts(parts: list[str], text: str, limit: int) -> None:
    assert parts
    for part in parts:
        assert part.strip(), "empty part"
        assert part == part.strip()
        assert body_length(part) <= limit
    # nothing is lost or reordered: only whitespace between parts differs
    assert "".join("".join(parts).split()) == "".join(text.split())


def test_short_text_is_one_part_stripped() -> None:
    assert split_message("  Hello there.  \n") == ["Hello there."]


def test_text_at_the_limit_is_not_split() -> None:
    text = "a" * BODY_LIMIT
    assert split_message(text) == [text]


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "\u00a0\t"])
def test_empty_text_has_no_parts(text: str) -> None:
    assert split_message(text) == []


def test_split_refuses_a_limit_too_small_for_one_character() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        split_message("hello", limit=1)


def test_a_5000_character_answer_splits_on_sentence_boundaries() -> None:
    text = _sentences(200)[:5000].rsplit(" ", 1)[0] + "."
    assert 4900 < len(text) <= 5000
    parts = split_message(text)
    _assert_parts(parts, text, BODY_LIMIT)
    assert len(parts) == 4
    for part in parts[:-1]:
        assert part[-1] in '.!?…"', part[-20:]
        assert len(part) > BODY_LIMIT - 200  # greedy: parts are full, not fragments


def test_sentence_boundary_wins_over_a_later_word_boundary() -> None:
    text = "First sentence here. " + "word " * 10
    assert split_message(text, limit=30) == [
        "First sentence here.",
        "word word word word word word",  # 29: words fill the room when no sentence ends
        "word word word word",
    ]


def test_decimals_and_urls_are_not_sentence_ends() -> None:
    text = "Pay 3.50 at example.com/pay now please ok"
    assert split_message(text, limit=20) == ["Pay 3.50 at", "example.com/pay now", "please ok"]


def test_a_late_paragraph_break_is_preferred_to_a_later_sentence_end() -> None:
    text = "One. Two three four.\n\nFive six. Seven eight nine ten."
    assert split_message(text, limit=40) == [
        "One. Two three four.",
        "Five six. Seven eight nine ten.",
    ]


def test_an_early_paragraph_break_does_not_make_a_tiny_part() -> None:
    text = "Hi.\n\nThis is a longer paragraph. It goes on for a while here."
    parts = split_message(text, limit=40)
    assert parts[0].startswith("Hi.\n\nThis is a longer paragraph.")


def test_line_breaks_are_boundaries_and_kept_inside_parts() -> None:
    text = "- item one\n- item two\n- item three\n- item four"
    assert split_message(text, limit=25) == ["- item one\n- item two", "- item three\n- item four"]


def test_words_when_there_is_no_sentence_end() -> None:
    text = " ".join(["word"] * 100)
    parts = split_message(text, limit=50)
    _assert_parts(parts, text, 50)
    assert all(p.split(" ") == ["word"] * len(p.split(" ")) for p in parts)


def test_hard_cut_when_there_is_no_whitespace() -> None:
    text = "x" * 4000
    parts = split_message(text)
    assert parts == ["x" * 1600, "x" * 1600, "x" * 800]


def test_hard_cut_never_splits_an_astral_character() -> None:
    text = "👍" * 1000  # 2000 UTF-16 units
    parts = split_message(text)
    _assert_parts(parts, text, BODY_LIMIT)
    assert [len(p) for p in parts] == [800, 200]


def test_hard_cut_keeps_a_combining_mark_with_its_letter() -> None:
    text = "e\u0301" * 10  # é as e + combining acute
    parts = split_message(text, limit=5)
    assert all(p[0] != "\u0301" for p in parts)
    assert "".join(parts) == text


def test_hard_cut_keeps_a_zwj_sequence_together_when_it_can() -> None:
    family = "👩\u200d👩\u200d👧"
    parts = split_message("ab" + family, limit=8)
    assert parts[0] == "ab"
    assert "".join(parts) == "ab" + family


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("limit", [2, 3, 7, 40, 160, 1600])
def test_split_properties_on_random_text(seed: int, limit: int) -> None:
    rng = random.Random(seed)
    alphabet = "abc de. f!? \n\n 👍é\u0301 \t,"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3000)))
    if not text.strip():
        text += "z"
    parts = split_message(text, limit=limit)
    _assert_parts(parts, text, limit)


def test_split_is_linear_enough_for_a_megabyte() -> None:
    text = _sentences(12_000)  # about a megabyte
    parts = split_message(text)
    _assert_parts(parts, text, BODY_LIMIT)


# -- template or text --------------------------------------------------------------------

TEMPLATE = Template(content_sid="HX" + "a" * 32, variables={"1": "Ada"})


def test_outside_the_window_the_template_goes_alone() -> None:
    plan = plan_reply("Hi Ada, about your call...", window_is_open=False, template=TEMPLATE)
    assert plan == ReplyPlan(template=TEMPLATE)


def test_inside_the_window_text_goes_even_with_a_template() -> None:
    plan = plan_reply("Hi Ada.", window_is_open=True, template=TEMPLATE)
    assert plan == ReplyPlan(parts=("Hi Ada.",))


def test_without_a_template_text_goes_outside_the_window_too() -> None:
    plan = plan_reply("x" * 2000, window_is_open=False, template=None)
    assert plan.template is None
    assert [len(p) for p in plan.parts] == [1600, 400]


def test_plan_refuses_empty_text_when_text_is_needed() -> None:
    with pytest.raises(EmptyMessage):
        plan_reply("  ", window_is_open=True, template=TEMPLATE)
    assert plan_reply("  ", window_is_open=False, template=TEMPLATE).template == TEMPLATE


def test_content_variables_json() -> None:
    assert content_variables_json({"1": "Ada", "2": "3pm ✓"}) == '{"1":"Ada","2":"3pm ✓"}'
    with pytest.raises(EmptyMessage, match="'2'"):
        content_variables_json({"1": "Ada", "2": " "})
    with pytest.raises(ValueError, match="at most 100"):
        content_variables_json({str(i): "x" for i in range(101)})


def test_check_content_sid() -> None:
    check_content_sid("HX" + "0123456789abcdef" * 2)
    with pytest.raises(ValueError, match="Content SID"):
        check_content_sid("HXnope")


# -- retry timing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(429, True), (500, True), (502, True), (503, True), (599, True), (400, False),
     (401, False), (403, False), (404, False), (409, False), (422, False)],
)  # fmt: skip
def test_retryable_statuses(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("-1", None),
        ("nan", None),
        ("soon", None),
        ("Sun, 01 Mar 2026 12:00:40 GMT", 9.5),
        ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(1)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0)]:
        delays = [backoff_delay(retry, initial=0.5, maximum=30, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not clumped


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(2)
    delays = [backoff_delay(1, initial=0.5, maximum=30, rng=rng, retry_after=3) for _ in range(100)]
    assert all(3 <= d <= 3.5 for d in delays)


def test_backoff_retries_count_from_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        backoff_delay(0, initial=0.5, maximum=30, rng=random.Random())


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
    from zoneinfo import ZoneInfo

    tokyo = datetime(2026, 3, 2, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert date_sent_filter(tokyo) == "2026-03-01"
