"""What a WhatsApp message may carry, on values: bodies, splitting, templates."""

from __future__ import annotations

import random

import pytest

from clients.twilio.content import (
    BODY_LIMIT,
    EmptyMessage,
    MessageTooLong,
    body_length,
    check_body,
    check_content_sid,
    content_variables_json,
    split_message,
)

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


# -- templates -------------------------------------------------------------------------


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
