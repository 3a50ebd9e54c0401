"""The JWKS cache's decisions (gateway.jwks.JwksState): when to fetch, and what to report.

Plain data and a clock argument: no event loop, no network.
"""

from __future__ import annotations

import pytest

from gateway.auth import KeySet
from gateway.jwks import JwksState, JwksStatus

TTL_S = 300.0
COOLDOWN_S = 30.0
T0 = 1_700_000_000.0
SOME_KEYS = KeySet(keys={"k": None})  # type: ignore[dict-item]  # only its length matters


def fresh() -> JwksState:
    return JwksState(ttl_s=TTL_S, cooldown_s=COOLDOWN_S)


def loaded(at: float = T0) -> JwksState:
    state = fresh()
    state.succeeded(SOME_KEYS, at)
    return state


def test_nothing_loaded_is_due_and_unavailable() -> None:
    state = fresh()
    assert state.refresh_due(T0)
    assert state.refetch_allowed(T0)
    assert state.status is JwksStatus.UNAVAILABLE
    assert state.to_json() == {
        "status": "unavailable",
        "keys": 0,
        "last_success_at": None,
        "last_attempt_at": None,
        "last_error": None,
    }


@pytest.mark.parametrize(
    ("after_s", "due"),
    [(0, False), (TTL_S - 0.001, False), (TTL_S, True), (TTL_S * 10, True), (-1, True)],
    ids=["just fetched", "before the TTL", "at the TTL", "long after", "clock went back"],
)
def test_ttl(after_s: float, due: bool) -> None:
    assert loaded().refresh_due(T0 + after_s) is due


@pytest.mark.parametrize(
    ("after_s", "allowed"),
    [(0, False), (COOLDOWN_S - 0.001, False), (COOLDOWN_S, True), (-5, True)],
    ids=["just fetched", "within the cooldown", "after the cooldown", "clock went back"],
)
def test_unknown_kid_refetch_waits_for_the_cooldown(after_s: float, allowed: bool) -> None:
    assert loaded().refetch_allowed(T0 + after_s) is allowed


def test_a_failure_keeps_the_keys_and_waits_a_cooldown_before_retrying() -> None:
    state = loaded()
    state.failed("timeout", T0 + TTL_S)
    assert state.keys is SOME_KEYS
    assert state.status is JwksStatus.STALE
    assert not state.refresh_due(T0 + TTL_S + COOLDOWN_S - 1)
    assert not state.refetch_allowed(T0 + TTL_S + COOLDOWN_S - 1)
    assert state.refresh_due(T0 + TTL_S + COOLDOWN_S)
    assert state.seconds_until_due(T0 + TTL_S) == COOLDOWN_S
    body = state.to_json()
    assert body["status"] == "stale"
    assert body["keys"] == 1
    assert body["last_error"] == "timeout"
    assert body["last_success_at"] == "2023-11-14T22:13:20.000Z"


def test_a_failure_before_any_success_stays_unavailable() -> None:
    state = fresh()
    state.failed("HTTP status 503", T0)
    assert state.status is JwksStatus.UNAVAILABLE
    assert not state.refresh_due(T0 + 1)
    assert state.refresh_due(T0 + COOLDOWN_S)


def test_a_success_after_a_failure_is_ok_again() -> None:
    state = loaded()
    state.failed("timeout", T0 + TTL_S)
    state.succeeded(SOME_KEYS, T0 + TTL_S + COOLDOWN_S)
    assert state.status is JwksStatus.OK
    assert state.last_error is None
    assert not state.refresh_due(T0 + TTL_S + COOLDOWN_S + 1)


def test_the_refresher_waits_until_the_ttl_and_at_least_a_second() -> None:
    state = loaded()
    assert state.seconds_until_due(T0) == TTL_S
    assert state.seconds_until_due(T0 + TTL_S - 0.5) == 1.0
    assert state.seconds_until_due(T0 + TTL_S * 3) == 1.0
    assert fresh().seconds_until_due(T0) == 1.0
