"""When a worker process that died unexpectedly is started again (pure: the caller
passes the time of each death, from a monotonic clock).

Each death is answered with a command: ``RestartWorker`` after a back-off that doubles
with every death in the window, or ``StopWorkers`` once ``max_deaths`` happened within
``window_s``: a worker that keeps dying (a port taken, a broken deployment) is not
restarted forever.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_DEATHS = 5
WINDOW_S = 60.0
INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 10.0


@dataclass(frozen=True)
class RestartWorker:
    """Start the worker again in ``delay_s`` seconds."""

    delay_s: float


@dataclass(frozen=True)
class StopWorkers:
    """Stop every worker and exit with a failure; ``reason`` says why."""

    reason: str


@dataclass
class RestartPolicy:
    """Deaths of every worker of one supervisor, counted in a sliding window."""

    max_deaths: int = MAX_DEATHS
    window_s: float = WINDOW_S
    initial_delay_s: float = INITIAL_DELAY_S
    max_delay_s: float = MAX_DELAY_S
    _deaths: deque[float] = field(default_factory=deque)

    def worker_died(self, now_s: float) -> RestartWorker | StopWorkers:
        """Record a death at ``now_s`` and say what to do about it."""
        self._deaths.append(now_s)
        while self._deaths and self._deaths[0] <= now_s - self.window_s:
            self._deaths.popleft()
        recent = len(self._deaths)
        if recent >= self.max_deaths:
            return StopWorkers(
                f"{recent} worker deaths within {self.window_s:g} s (at most "
                f"{self.max_deaths - 1} are restarted)"
            )
        return RestartWorker(min(self.max_delay_s, self.initial_delay_s * 2 ** (recent - 1)))
