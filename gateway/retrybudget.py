"""A retry budget per back-end (pure: the clock is an argument).

Retries may add at most ``ratio`` of the recent request rate, plus
``min_per_s`` retries per second that are always allowed (Finagle's
``RetryBudget``; Envoy's retry budgets bound retries the same way, by
concurrency). Over the last ``window_s`` seconds:

    retries <= ratio * requests + min_per_s * window_s

A request is a first attempt; a retry is any further attempt. When a
back-end fails, every caller wants to retry at once: the budget turns that
storm into a bounded extra load, so the back-end can come back.

Counts are kept in ``buckets`` slices of the window, so memory is fixed and
old traffic leaves the window one slice at a time: an event is counted for
between ``window_s - window_s / buckets`` and ``window_s`` seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryBudgetPolicy:
    """``ratio`` of the requests, plus ``min_per_s`` per second, over ``window_s``."""

    ratio: float = 0.2
    min_per_s: float = 10.0
    window_s: float = 10.0
    buckets: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ValueError("retry budget: ratio must be between 0 and 1")
        if self.min_per_s < 0:
            raise ValueError("retry budget: min_per_s must not be negative")
        if self.window_s <= 0 or self.buckets < 1:
            raise ValueError("retry budget: window_s and buckets must be positive")


class RetryBudget:
    """The retry budget of one back-end. Not thread-safe: one event loop owns it."""

    def __init__(self, policy: RetryBudgetPolicy) -> None:
        self.policy = policy
        self._slice_s = policy.window_s / policy.buckets
        # One slot per slice of the window: (slice number, requests, retries).
        self._slots: list[tuple[int, int, int]] = [(-1, 0, 0)] * policy.buckets

    def record_request(self, now_s: float) -> None:
        """Count a first attempt: it adds ``ratio`` of a retry to the budget."""
        self._add(now_s, requests=1, retries=0)

    def try_retry(self, now_s: float) -> bool:
        """Spend one retry and return True, or return False when the budget is used up."""
        if not self.can_retry(now_s):
            return False
        self._add(now_s, requests=0, retries=1)
        return True

    def can_retry(self, now_s: float) -> bool:
        """Whether a retry would be allowed now (nothing is spent)."""
        requests, retries = self.totals(now_s)
        allowed = self.policy.ratio * requests + self.policy.min_per_s * self.policy.window_s
        # Whole retries only: a budget of 0.9 does not allow one.
        return retries + 1 <= math.floor(allowed + 1e-9)

    def totals(self, now_s: float) -> tuple[int, int]:
        """Requests and retries counted in the window ending at ``now_s``."""
        current = self._slice(now_s)
        requests = retries = 0
        for number, slot_requests, slot_retries in self._slots:
            if current - len(self._slots) < number <= current:
                requests += slot_requests
                retries += slot_retries
        return requests, retries

    def _slice(self, now_s: float) -> int:
        return math.floor(now_s / self._slice_s)

    def _add(self, now_s: float, *, requests: int, retries: int) -> None:
        number = self._slice(now_s)
        index = number % len(self._slots)
        slot_number, slot_requests, slot_retries = self._slots[index]
        if slot_number != number:
            slot_requests = slot_retries = 0
        self._slots[index] = (number, slot_requests + requests, slot_retries + retries)
