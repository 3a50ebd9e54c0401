"""Retry delays: capped exponential back-off with full jitter (gateway.backoff)."""

from __future__ import annotations

import pytest

from gateway.backoff import backoff_delay_s
from gateway.config import RetryPolicy

POLICY = RetryPolicy(max_attempts=10, initial_backoff_ms=100, max_backoff_ms=1000, multiplier=2.0)

# (name, policy, attempt, rand, expected delay in seconds)
DELAY_CASES = [
    ("first retry, full bound", POLICY, 1, 1.0, 0.1),
    ("second retry doubles", POLICY, 2, 1.0, 0.2),
    ("third retry", POLICY, 3, 1.0, 0.4),
    ("fourth retry", POLICY, 4, 1.0, 0.8),
    ("fifth retry is capped", POLICY, 5, 1.0, 1.0),
    ("far retry stays capped", POLICY, 30, 1.0, 1.0),
    ("rand 0 gives 0", POLICY, 3, 0.0, 0.0),
    ("rand 0 gives 0 when capped", POLICY, 9, 0.0, 0.0),
    ("rand scales: half", POLICY, 3, 0.5, 0.2),
    ("rand scales: quarter, capped", POLICY, 9, 0.25, 0.25),
    (
        "other multiplier",
        RetryPolicy(initial_backoff_ms=50, max_backoff_ms=10_000, multiplier=3.0),
        3,
        1.0,
        0.45,
    ),
    (
        "cap below the initial delay",
        RetryPolicy(initial_backoff_ms=500, max_backoff_ms=200),
        1,
        1.0,
        0.2,
    ),
]


@pytest.mark.parametrize(
    ("policy", "attempt", "rand", "expected"),
    [c[1:] for c in DELAY_CASES],
    ids=[c[0] for c in DELAY_CASES],
)
def test_backoff_delay(policy: RetryPolicy, attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay_s(policy, attempt, rand) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", [1, 2, 3, 6])
def test_delay_is_linear_in_rand(attempt: int) -> None:
    full = backoff_delay_s(POLICY, attempt, 1.0)
    for rand in (0.0, 0.1, 0.3, 0.7, 0.999):
        assert backoff_delay_s(POLICY, attempt, rand) == pytest.approx(full * rand)


def test_bound_never_decreases_and_never_exceeds_the_cap() -> None:
    bounds = [backoff_delay_s(POLICY, n, 1.0) for n in range(1, 20)]
    assert bounds == sorted(bounds)
    assert max(bounds) == pytest.approx(POLICY.max_backoff_ms / 1000)
