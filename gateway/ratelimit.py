"""Sliding-window rate limiting (pure: the clock is an argument)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SlidingWindow:
    """At most ``limit`` events per key in any window of ``window_s`` seconds.

    Each key keeps the times of its last ``limit`` events, so memory per key is
    bounded; keys with no event inside the window are pruned as time passes.
    """

    limit: int
    window_s: float
    _events: dict[str, deque[float]] = field(default_factory=dict)
    _last_prune_s: float = 0.0

    def acquire(self, key: str, now_s: float) -> float | None:
        """Record an event and return ``None``, or refuse it and return seconds to wait."""
        self._prune(now_s)
        times = self._events.setdefault(key, deque(maxlen=self.limit))
        while times and times[0] <= now_s - self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return max(times[0] + self.window_s - now_s, 0.001)
        times.append(now_s)
        return None

    def _prune(self, now_s: float) -> None:
        if now_s - self._last_prune_s < self.window_s:
            return
        self._last_prune_s = now_s
        horizon = now_s - self.window_s
        for key in [k for k, t in self._events.items() if not t or t[-1] <= horizon]:
            del self._events[key]
