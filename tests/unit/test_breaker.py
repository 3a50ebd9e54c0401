"""The circuit breaker (gateway.breaker): closed, open, half-open, with the clock as data."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.breaker import (
    GAUGE_VALUE,
    TRANSITIONS,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Outcome,
    Permit,
)

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
OK, FAIL, GONE = Outcome.SUCCEEDED, Outcome.FAILED, Outcome.ABANDONED
POLICY = BreakerPolicy(failures=3, open_s=5.0, trial_timeout_s=30.0)


@dataclass(frozen=True)
class Call:
    """Admit a call named ``name`` at ``at``; ``admitted`` is what admit must answer."""

    name: str
    at: float
    admitted: bool = True
    trial: bool = False


@dataclass(frozen=True)
class End:
    """Settle the call named ``name`` with ``outcome`` at ``at``."""

    name: str
    outcome: Outcome
    at: float


@dataclass(frozen=True)
class Is:
    """At ``at`` the breaker is in ``state``."""

    at: float
    state: BreakerState


Step = Call | End | Is


def call_then(outcome: Outcome, name: str, at: float, *, trial: bool = False) -> list[Step]:
    return [Call(name, at, trial=trial), End(name, outcome, at)]


# (name, policy, steps)
SCRIPTS: list[tuple[str, BreakerPolicy, list[Step]]] = [
    ("a new breaker is closed", POLICY, [Is(0.0, CLOSED), Call("a", 0.0)]),
    (
        "failures below the threshold keep it closed",
        POLICY,
        [*call_then(FAIL, "a", 0.0), *call_then(FAIL, "b", 1.0), Is(1.0, CLOSED)],
    ),
    (
        "the threshold of consecutive failures opens it",
        POLICY,
        [
            *call_then(FAIL, "a", 0.0),
            *call_then(FAIL, "b", 1.0),
            *call_then(FAIL, "c", 2.0),
            Is(2.0, OPEN),
            Call("d", 2.0, admitted=False),
        ],
    ),
    (
        "a success resets the count",
        POLICY,
        [
            *call_then(FAIL, "a", 0.0),
            *call_then(FAIL, "b", 0.0),
            *call_then(OK, "c", 0.0),
            *call_then(FAIL, "d", 0.0),
            *call_then(FAIL, "e", 0.0),
            Is(0.0, CLOSED),
        ],
    ),
    (
        "abandoned calls neither count nor reset",
        POLICY,
        [
            *call_then(FAIL, "a", 0.0),
            *call_then(GONE, "b", 0.0),
            *call_then(FAIL, "c", 0.0),
            Is(0.0, CLOSED),
            *call_then(FAIL, "d", 0.0),
            Is(0.0, OPEN),
        ],
    ),
    (
        "open refuses until the open time is over, then half-open",
        POLICY,
        [
            *call_then(FAIL, "a", 0.0),
            *call_then(FAIL, "b", 0.0),
            *call_then(FAIL, "c", 10.0),
            Call("d", 14.999, admitted=False),
            Is(14.999, OPEN),
            Is(15.0, HALF_OPEN),
        ],
    ),
    (
        "half-open lets exactly one trial through; its success closes",
        POLICY,
        [
            *[s for n in "abc" for s in call_then(FAIL, n, 0.0)],
            Call("trial", 5.0, trial=True),
            Call("other", 5.0, admitted=False),
            Is(5.0, HALF_OPEN),
            End("trial", OK, 6.0),
            Is(6.0, CLOSED),
            Call("next", 6.0),
        ],
    ),
    (
        "a failed trial reopens for another open time",
        POLICY,
        [
            *[s for n in "abc" for s in call_then(FAIL, n, 0.0)],
            Call("trial", 5.0, trial=True),
            End("trial", FAIL, 7.0),
            Is(7.0, OPEN),
            Call("x", 11.9, admitted=False),
            Is(12.0, HALF_OPEN),
            Call("trial2", 12.0, trial=True),
        ],
    ),
    (
        "an abandoned trial frees the slot for the next caller",
        POLICY,
        [
            *[s for n in "abc" for s in call_then(FAIL, n, 0.0)],
            Call("trial", 5.0, trial=True),
            End("trial", GONE, 5.5),
            Is(5.5, HALF_OPEN),
            Call("trial2", 5.5, trial=True),
        ],
    ),
    (
        "a trial that never reports is replaced after the trial timeout",
        BreakerPolicy(failures=1, open_s=1.0, trial_timeout_s=10.0),
        [
            *call_then(FAIL, "a", 0.0),
            Call("lost", 1.0, trial=True),
            Call("x", 10.9, admitted=False),
            Call("trial2", 11.0, trial=True),
            End("lost", FAIL, 11.5),  # stale report of the replaced trial: still counts
            Is(11.5, OPEN),
        ],
    ),
    (
        "late outcomes of calls admitted before the breaker opened are ignored",
        POLICY,
        [
            Call("slow-ok", 0.0),
            Call("slow-fail", 0.0),
            *[s for n in "abc" for s in call_then(FAIL, n, 0.0)],
            Is(0.0, OPEN),
            End("slow-ok", OK, 1.0),
            Is(1.0, OPEN),
            Call("trial", 5.0, trial=True),
            End("trial", OK, 5.0),
            End("slow-fail", FAIL, 5.0),
            Is(5.0, CLOSED),
        ],
    ),
    (
        "a single failure opens with failures=1",
        BreakerPolicy(failures=1, open_s=0.5),
        [*call_then(FAIL, "a", 0.0), Is(0.0, OPEN), Is(0.5, HALF_OPEN)],
    ),
]


def run_script(breaker: CircuitBreaker, steps: list[Step]) -> None:
    permits: dict[str, Permit] = {}
    for number, step in enumerate(steps):
        where = f"step {number}: {step}"
        if isinstance(step, Call):
            permit = breaker.admit(step.at)
            assert (permit is not None) == step.admitted, where
            if permit is not None:
                assert permit.trial == step.trial, where
                permits[step.name] = permit
        elif isinstance(step, End):
            breaker.settle(permits.pop(step.name), step.outcome, step.at)
        else:
            assert breaker.state(step.at) is step.state, where


@pytest.mark.parametrize(("policy", "steps"), [s[1:] for s in SCRIPTS], ids=[s[0] for s in SCRIPTS])
def test_breaker_script(policy: BreakerPolicy, steps: list[Step]) -> None:
    run_script(CircuitBreaker(policy), steps)


def test_transitions_are_queued_in_order_and_drained_once() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failures=1, open_s=1.0))
    first = breaker.admit(0.0)
    assert first is not None
    breaker.settle(first, FAIL, 0.0)
    trial = breaker.admit(2.0)
    assert trial is not None and trial.trial
    breaker.settle(trial, OK, 2.5)
    changes = breaker.transitions()
    assert [(c.before, c.after, c.at_s) for c in changes] == [
        (CLOSED, OPEN, 0.0),
        (OPEN, HALF_OPEN, 2.0),
        (HALF_OPEN, CLOSED, 2.5),
    ]
    assert breaker.transitions() == []


def test_accepting_does_not_take_the_trial() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failures=1, open_s=1.0))
    permit = breaker.admit(0.0)
    assert permit is not None
    breaker.settle(permit, FAIL, 0.0)
    assert not breaker.accepting(0.5)
    assert breaker.accepting(1.0)
    assert breaker.accepting(1.0)  # still: nothing was reserved
    trial = breaker.admit(1.0)
    assert trial is not None and trial.trial
    assert not breaker.accepting(1.0)


def test_health_entry() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failures=2, open_s=5.0))
    assert breaker.to_json(0.0) == {
        "state": "closed",
        "consecutive_failures": 0,
        "open_remaining_ms": 0,
    }
    for _ in range(2):
        permit = breaker.admit(0.0)
        assert permit is not None
        breaker.settle(permit, FAIL, 0.0)
    assert breaker.to_json(1.5) == {
        "state": "open",
        "consecutive_failures": 2,
        "open_remaining_ms": 3500,
    }
    assert breaker.to_json(5.0)["state"] == "half_open"


def test_every_state_has_a_gauge_value_and_the_table_names_only_states() -> None:
    assert GAUGE_VALUE == {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
    for (before, _), after in TRANSITIONS.items():
        assert before in GAUGE_VALUE and after in GAUGE_VALUE


@pytest.mark.parametrize("kwargs", [{"failures": 0}, {"open_s": 0.0}, {"trial_timeout_s": -1.0}])
def test_invalid_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


# Property: whatever the calls, the breaker never lets more than one trial run at once,
# never admits while open, and reports only transitions from the table.
ALLOWED_CHANGES = {(before, after) for (before, _), after in TRANSITIONS.items()}
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["admit", "settle", "wait"]),
        st.sampled_from(list(Outcome)),
        st.floats(min_value=0.0, max_value=3.0),
    ),
    max_size=60,
)


@given(OPERATIONS)
def test_breaker_invariants(operations: list[tuple[str, Outcome, float]]) -> None:
    # A trial timeout longer than any run: a held trial is never replaced here.
    policy = BreakerPolicy(failures=2, open_s=1.0, trial_timeout_s=1000.0)
    breaker = CircuitBreaker(policy)
    now = 0.0
    held: list[Permit] = []
    for action, outcome, amount in operations:
        if action == "wait":
            now += amount
            continue
        if action == "settle" and held:
            breaker.settle(held.pop(0), outcome, now)
            continue
        state = breaker.state(now)
        trials_running = sum(p.trial for p in held)
        permit = breaker.admit(now)
        if state is OPEN:
            assert permit is None
        if state is HALF_OPEN and trials_running:
            assert permit is None
        if permit is not None:
            assert not (permit.trial and trials_running)
            held.append(permit)
        for change in breaker.transitions():
            assert (change.before, change.after) in ALLOWED_CHANGES
