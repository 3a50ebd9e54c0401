"""The retry budget (gateway.retrybudget): a ratio of recent requests plus a floor per second."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.retrybudget import RetryBudget, RetryBudgetPolicy


def budget(ratio: float, min_per_s: float, window_s: float = 10.0) -> RetryBudget:
    return RetryBudget(RetryBudgetPolicy(ratio=ratio, min_per_s=min_per_s, window_s=window_s))


def retries_allowed(b: RetryBudget, now_s: float, tries: int = 10_000) -> int:
    return sum(b.try_retry(now_s) for _ in range(tries))


# (name, ratio, min_per_s, requests before, expected retries allowed at once)
CAPACITY_CASES = [
    ("no traffic, no floor: no retry", 0.2, 0.0, 0, 0),
    ("the floor alone: min_per_s times the window", 0.2, 1.0, 0, 10),
    ("ratio of the requests", 0.2, 0.0, 100, 20),
    ("ratio plus floor", 0.2, 1.0, 100, 30),
    ("partial retries are not allowed", 0.2, 0.0, 9, 1),
    ("ratio zero and no floor: never", 0.0, 0.0, 1000, 0),
    ("ratio one: one retry per request", 1.0, 0.0, 7, 7),
    ("the default: 0.2 and 10 per second", 0.2, 10.0, 50, 110),
]


@pytest.mark.parametrize(
    ("ratio", "min_per_s", "requests", "expected"),
    [c[1:] for c in CAPACITY_CASES],
    ids=[c[0] for c in CAPACITY_CASES],
)
def test_capacity(ratio: float, min_per_s: float, requests: int, expected: int) -> None:
    b = budget(ratio, min_per_s)
    for _ in range(requests):
        b.record_request(100.0)
    assert retries_allowed(b, 100.0) == expected


def test_refused_retries_are_not_spent() -> None:
    b = budget(0.5, 0.0)
    for _ in range(2):
        b.record_request(0.0)
    assert b.try_retry(0.0)
    assert not b.try_retry(0.0)
    assert not b.try_retry(0.0)
    assert b.totals(0.0) == (2, 1)
    b.record_request(0.0)
    b.record_request(0.0)
    assert b.try_retry(0.0)


def test_traffic_leaves_the_window() -> None:
    b = budget(1.0, 0.0, window_s=10.0)
    for _ in range(5):
        b.record_request(0.0)
    assert retries_allowed(b, 0.0) == 5
    assert not b.can_retry(9.9)  # the window still holds the requests and the retries
    assert b.totals(10.0) == (0, 0)  # all of it was in the slice that has just left
    assert not b.can_retry(10.0)  # and no requests means no retries (no floor)
    b.record_request(10.5)
    assert retries_allowed(b, 10.5) == 1


def test_spent_retries_leave_the_window_too() -> None:
    b = budget(0.0, 1.0, window_s=10.0)  # the floor: 10 retries per 10 s
    assert retries_allowed(b, 0.0) == 10
    assert retries_allowed(b, 5.0) == 0
    assert retries_allowed(b, 10.0) == 10


def test_slices_expire_one_at_a_time() -> None:
    b = budget(1.0, 0.0, window_s=10.0)  # ten slices of one second
    b.record_request(0.5)
    b.record_request(5.5)
    assert b.totals(9.9) == (2, 0)
    assert b.totals(10.0) == (1, 0)  # the slice [0, 1) has left the window
    assert b.totals(14.9) == (1, 0)
    assert b.totals(15.0) == (0, 0)  # and now [5, 6): 9.5 s after the request


@pytest.mark.parametrize(
    "kwargs",
    [{"ratio": -0.1}, {"ratio": 1.5}, {"min_per_s": -1.0}, {"window_s": 0.0}, {"buckets": 0}],
)
def test_invalid_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudgetPolicy(**kwargs)  # type: ignore[arg-type]


EVENTS = st.lists(
    st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=2.0)),
    max_size=300,
)


@given(EVENTS, st.sampled_from([0.0, 0.1, 0.2, 1.0]), st.sampled_from([0.0, 0.5, 10.0]))
def test_a_retry_is_allowed_exactly_when_it_fits_the_budget(
    events: list[tuple[bool, float]], ratio: float, min_per_s: float
) -> None:
    """Whatever the traffic, a retry is allowed iff, counting it, retries in the window stay
    within ratio * requests + min_per_s * window_s."""
    b = budget(ratio, min_per_s)
    now = 0.0
    for is_retry, step in events:
        now += step
        if not is_retry:
            b.record_request(now)
            continue
        requests, retries = b.totals(now)
        fits = retries + 1 <= ratio * requests + min_per_s * b.policy.window_s + 1e-9
        assert b.try_retry(now) == fits
        assert b.totals(now) == (requests, retries + fits)
