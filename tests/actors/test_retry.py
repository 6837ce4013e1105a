"""Retry timing on values: the exponential ceiling, jitter, Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from actors.retry import backoff_delay, is_retryable_status, parse_retry_after

NOW = datetime(2026, 3, 1, 12, 0, 30, 500_000, tzinfo=UTC)

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
        delays = [
            backoff_delay(retry, initial=0.5, maximum=30, jitter=1.0, rng=rng) for _ in range(200)
        ]
        assert all(0 < d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not clumped


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(2)
    delays = [backoff_delay(1, initial=0.5, maximum=30, rng=rng, retry_after=3) for _ in range(100)]
    assert all(3 <= d <= 3.5 for d in delays)


def test_backoff_retries_count_from_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        backoff_delay(0, initial=0.5, maximum=30, rng=random.Random())


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [backoff_delay(n, initial=0.1, maximum=1) for n in range(1, 7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1, 1])
    assert backoff_delay(10_000, initial=0.1, maximum=1) == 1  # no overflow however long


def test_jitter_shortens_the_delay_by_at_most_its_fraction() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(3, initial=1, maximum=10, jitter=0.5, rng=rng) for _ in range(1000)]
    assert all(2 <= d <= 4 for d in delays)
    assert max(delays) - min(delays) > 1  # spread out, not in lock-step


def test_jitter_needs_a_random_source_and_a_fraction() -> None:
    with pytest.raises(ValueError, match="random number generator"):
        backoff_delay(1, initial=1, maximum=10, jitter=0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        backoff_delay(1, initial=1, maximum=10, jitter=1.5, rng=random.Random())
