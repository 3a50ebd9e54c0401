"""Retry delays: exponential back-off with full jitter (pure)."""

from __future__ import annotations

from gateway.config import RetryPolicy


def backoff_delay_s(policy: RetryPolicy, attempt: int, rand: float) -> float:
    """Delay before retry number ``attempt`` (1-based), given ``rand`` in [0, 1).

    Full jitter: a uniform pick between 0 and the capped exponential bound.
    """
    bound_ms = min(
        policy.max_backoff_ms, policy.initial_backoff_ms * policy.multiplier ** (attempt - 1)
    )
    return bound_ms * rand / 1000
