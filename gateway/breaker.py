"""A circuit breaker per back-end, as plain data (pure: the clock is an argument).

CLOSED lets every call through and counts consecutive failures; ``failures``
of them in a row open it. OPEN refuses every call for ``open_s`` seconds; then
the breaker is HALF_OPEN and lets exactly one trial call through: its success
closes the breaker, its failure opens it again for another ``open_s``.

The shell asks ``admit`` before each call and reports the call's end with
``settle``. Each admitted call holds a ``Permit``; outcomes of calls admitted
in an earlier period (before the breaker last opened) are stale and ignored,
so a burst of late failures cannot reopen a breaker that its trial has just
closed. State changes are queued: feed the breaker, then drain
``transitions()`` to publish them (metrics, logs).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class BreakerState(enum.StrEnum):
    """Where a breaker stands; the values are what ``/health`` shows."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


GAUGE_VALUE: Mapping[BreakerState, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}
"""The value of the breaker-state gauge for each state."""


class Outcome(enum.Enum):
    """How an admitted call ended, as far as the back-end's health goes."""

    SUCCEEDED = "succeeded"  # the final reply arrived
    FAILED = "failed"  # UNAVAILABLE, DEADLINE_EXCEEDED, or the stream failed before the final reply
    ABANDONED = "abandoned"  # the caller went away, or the call never reached the back-end


class _Signal(enum.Enum):
    THRESHOLD_REACHED = "threshold reached"
    OPEN_TIME_ELAPSED = "open time elapsed"
    TRIAL_SUCCEEDED = "trial succeeded"
    TRIAL_FAILED = "trial failed"


TRANSITIONS: Mapping[tuple[BreakerState, _Signal], BreakerState] = {
    (BreakerState.CLOSED, _Signal.THRESHOLD_REACHED): BreakerState.OPEN,
    (BreakerState.OPEN, _Signal.OPEN_TIME_ELAPSED): BreakerState.HALF_OPEN,
    (BreakerState.HALF_OPEN, _Signal.TRIAL_SUCCEEDED): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, _Signal.TRIAL_FAILED): BreakerState.OPEN,
}
"""Every state change of a breaker; any other (state, signal) pair changes nothing."""


@dataclass(frozen=True)
class BreakerPolicy:
    """``failures`` consecutive failures open the breaker for ``open_s`` seconds.

    ``trial_timeout_s`` bounds how long a half-open breaker waits for its trial
    call to report; after it another trial is let through (a trial whose end
    was never reported must not keep the back-end refused for ever). Use the
    back-end's call timeout.
    """

    failures: int = 5
    open_s: float = 5.0
    trial_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("breaker: failures must be at least 1")
        if self.open_s <= 0 or self.trial_timeout_s <= 0:
            raise ValueError("breaker: open_s and trial_timeout_s must be positive")


@dataclass(frozen=True)
class Permit:
    """One admitted call: ``trial`` when it is the half-open breaker's trial call."""

    period: int
    trial: bool


@dataclass(frozen=True)
class StateChanged:
    """The breaker moved from ``before`` to ``after`` at ``at_s``."""

    before: BreakerState
    after: BreakerState
    at_s: float
    reason: str


class CircuitBreaker:
    """The breaker of one back-end. Not thread-safe: one event loop owns it."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at_s = 0.0
        self._trial_started_s: float | None = None
        # Bumped each time the breaker opens: permits of an older period are stale.
        self._period = 0
        self._changes: list[StateChanged] = []

    def state(self, now_s: float) -> BreakerState:
        """The state at ``now_s`` (an open breaker whose open time is over is half-open)."""
        self._advance(now_s)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success (the count that opens a closed breaker)."""
        return self._consecutive_failures

    def accepting(self, now_s: float) -> bool:
        """Whether ``admit`` would let a call through now (it does not take the trial)."""
        self._advance(now_s)
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.HALF_OPEN:
            return not self._trial_running(now_s)
        return False

    def admit(self, now_s: float) -> Permit | None:
        """Let a call through and return its permit, or refuse it with ``None``."""
        self._advance(now_s)
        if self._state is BreakerState.CLOSED:
            return Permit(self._period, trial=False)
        if self._state is BreakerState.HALF_OPEN and not self._trial_running(now_s):
            self._trial_started_s = now_s
            return Permit(self._period, trial=True)
        return None

    def settle(self, permit: Permit, outcome: Outcome, now_s: float) -> None:
        """Report how the call holding ``permit`` ended."""
        self._advance(now_s)
        if permit.period != self._period or outcome is Outcome.ABANDONED:
            if permit.trial and permit.period == self._period:
                self._trial_started_s = None  # free the trial slot for the next caller
            return
        if outcome is Outcome.SUCCEEDED:
            self._consecutive_failures = 0
        else:
            self._consecutive_failures += 1
        if permit.trial:
            self._trial_started_s = None
            signal = (
                _Signal.TRIAL_SUCCEEDED if outcome is Outcome.SUCCEEDED else _Signal.TRIAL_FAILED
            )
            self._apply(signal, now_s)
        elif self._consecutive_failures >= self.policy.failures:
            self._apply(_Signal.THRESHOLD_REACHED, now_s)

    def remaining_open_s(self, now_s: float) -> float:
        """Seconds until an open breaker lets a trial through; 0 when it is not open."""
        self._advance(now_s)
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at_s + self.policy.open_s - now_s)

    def transitions(self) -> list[StateChanged]:
        """The state changes since the last call, oldest first (and forget them)."""
        changes, self._changes = self._changes, []
        return changes

    def to_json(self, now_s: float) -> dict[str, Any]:
        """This breaker's entry in a back-end's ``/health`` record."""
        return {
            "state": self.state(now_s).value,
            "consecutive_failures": self._consecutive_failures,
            "open_remaining_ms": round(self.remaining_open_s(now_s) * 1000),
        }

    def _trial_running(self, now_s: float) -> bool:
        started = self._trial_started_s
        return started is not None and now_s - started < self.policy.trial_timeout_s

    def _advance(self, now_s: float) -> None:
        if self._state is BreakerState.OPEN and now_s - self._opened_at_s >= self.policy.open_s:
            self._apply(_Signal.OPEN_TIME_ELAPSED, now_s)

    def _apply(self, signal: _Signal, now_s: float) -> None:
        after = TRANSITIONS.get((self._state, signal))
        if after is None:
            return
        before, self._state = self._state, after
        if after is BreakerState.OPEN:
            self._opened_at_s = now_s
            self._period += 1
        if after is BreakerState.HALF_OPEN:
            self._trial_started_s = None
        self._changes.append(StateChanged(before, after, now_s, signal.value))
