"""Sliding-window rate limiting and connection counting (gateway.ratelimit), clock as data."""

from __future__ import annotations

import pytest

from gateway.ratelimit import SlidingWindow

# (name, limit, window_s, [(key, now_s, expected retry-after or None)])
WINDOW_CASES = [
    (
        "allowed up to the limit, then refused",
        3,
        10.0,
        [("a", 0.0, None), ("a", 1.0, None), ("a", 2.0, None), ("a", 3.0, 7.0)],
    ),
    (
        "sliding, not fixed buckets",
        2,
        10.0,
        [("a", 0.0, None), ("a", 5.0, None), ("a", 9.0, 1.0), ("a", 10.01, None)],
    ),
    (
        # A fixed 10 s bucket would reset at t=10 and allow t=10.5 and t=11.
        "no burst at a bucket edge",
        2,
        10.0,
        [("a", 9.0, None), ("a", 9.5, None), ("a", 10.5, 8.5), ("a", 11.0, 8.0)],
    ),
    (
        "an event exactly one window old has expired",
        1,
        10.0,
        [("a", 0.0, None), ("a", 10.0, None)],
    ),
    (
        "refused attempts are not counted",
        1,
        10.0,
        [("a", 0.0, None), ("a", 4.0, 6.0), ("a", 8.0, 2.0), ("a", 10.0, None)],
    ),
    (
        "retry-after points at the oldest event in the window",
        2,
        10.0,
        [
            ("a", 0.0, None),
            ("a", 6.0, None),
            ("a", 7.0, 3.0),
            ("a", 10.0, None),
            ("a", 11.0, 5.0),
            ("a", 16.0, None),
        ],
    ),
    (
        "keys are independent",
        1,
        10.0,
        [("a", 0.0, None), ("b", 0.0, None), ("a", 1.0, 9.0), ("b", 2.0, 8.0), ("c", 2.0, None)],
    ),
    (
        "a large clock value (monotonic time) works the same",
        2,
        60.0,
        [("a", 1e6, None), ("a", 1e6 + 30, None), ("a", 1e6 + 59, 1.0), ("a", 1e6 + 60, None)],
    ),
]


@pytest.mark.parametrize(
    ("limit", "window_s", "steps"),
    [c[1:] for c in WINDOW_CASES],
    ids=[c[0] for c in WINDOW_CASES],
)
def test_sliding_window(
    limit: int, window_s: float, steps: list[tuple[str, float, float | None]]
) -> None:
    window = SlidingWindow(limit, window_s)
    for i, (key, now_s, expected) in enumerate(steps):
        got = window.acquire(key, now_s)
        if expected is None:
            assert got is None, f"step {i}: {key}@{now_s} refused with {got}"
        else:
            assert got is not None, f"step {i}: {key}@{now_s} allowed"
            assert got > 0
            assert got == pytest.approx(expected, abs=1e-6), f"step {i}"


def test_retry_after_is_exact() -> None:
    """Acquiring again after the returned delay succeeds; a bit before it does not."""
    window = SlidingWindow(3, 10.0)
    for t in (0.0, 2.5, 4.0):
        assert window.acquire("k", t) is None
    retry = window.acquire("k", 6.0)
    assert retry == pytest.approx(4.0)
    assert window.acquire("k", 6.0 + retry - 0.01) is not None
    assert window.acquire("k", 6.0 + retry) is None


def test_idle_keys_are_pruned() -> None:
    window = SlidingWindow(5, 10.0)
    for n in range(100):
        assert window.acquire(f"user-{n}", 1.0) is None
    assert len(window._events) == 100
    assert window.acquire("late", 30.0) is None
    assert set(window._events) == {"late"}


def test_active_keys_survive_pruning() -> None:
    window = SlidingWindow(2, 10.0)
    assert window.acquire("idle", 0.0) is None
    assert window.acquire("active", 0.0) is None
    assert window.acquire("active", 15.0) is None
    assert window.acquire("other", 19.0) is None  # prunes: horizon 9
    assert set(window._events) == {"active", "other"}
    # "active" kept its history: 15 is still in the window at 21.
    assert window.acquire("active", 20.0) is None
    assert window.acquire("active", 21.0) == pytest.approx(4.0)


def test_memory_per_key_is_bounded_by_the_limit() -> None:
    window = SlidingWindow(3, 10.0)
    for n in range(1000):
        window.acquire("k", n * 0.001)
    assert len(window._events["k"]) == 3
