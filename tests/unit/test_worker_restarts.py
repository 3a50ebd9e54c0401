"""When a dead worker is started again (gateway.worker_restarts), fed with timestamps."""

from __future__ import annotations

import pytest

from gateway.worker_restarts import RestartPolicy, RestartWorker, StopWorkers


def test_the_back_off_doubles_with_each_recent_death_up_to_the_cap() -> None:
    policy = RestartPolicy(max_deaths=10, window_s=60, initial_delay_s=0.5, max_delay_s=3)
    delays = [policy.worker_died(float(t)) for t in range(6)]
    assert delays == [RestartWorker(d) for d in (0.5, 1.0, 2.0, 3.0, 3.0, 3.0)]


@pytest.mark.parametrize(
    ("deaths", "expected"),
    [
        # Four deaths within the window are restarted; the fifth stops everything.
        ([0, 1, 2, 3], RestartWorker(4.0)),
        ([0, 1, 2, 3, 4], StopWorkers),
        ([0, 10, 20, 30, 59.9], StopWorkers),
        # Deaths that left the window no longer count: the back-off starts over.
        ([0, 10, 20, 30, 60], RestartWorker(4.0)),
        ([0, 100, 200, 300, 400], RestartWorker(0.5)),
    ],
)
def test_deaths_in_the_window_decide(
    deaths: list[float], expected: RestartWorker | type[StopWorkers]
) -> None:
    policy = RestartPolicy(max_deaths=5, window_s=60, initial_delay_s=0.5, max_delay_s=10)
    decision = [policy.worker_died(t) for t in deaths][-1]
    if expected is StopWorkers:
        assert isinstance(decision, StopWorkers)
        assert decision.reason == "5 worker deaths within 60 s (at most 4 are restarted)"
    else:
        assert decision == expected


def test_defaults_give_up_after_five_deaths_in_a_minute() -> None:
    policy = RestartPolicy()
    decisions = [policy.worker_died(t * 5.0) for t in range(5)]
    assert all(isinstance(d, RestartWorker) for d in decisions[:4])
    assert isinstance(decisions[4], StopWorkers)
