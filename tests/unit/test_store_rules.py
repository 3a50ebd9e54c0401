"""The store's pure decisions (gateway.store.rules), table-driven, and the purity of
the store's core modules (they are not yet in test_pure_core.PURE_MODULES)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway.store import DedupResult, DedupStatus, EntityDecision, EntityVerdict, rules
from tests.unit.test_pure_core import environment_reads, forbidden_imports

ROOT = Path(__file__).resolve().parents[2]
NEW, REPLAY, CONFLICT = DedupStatus.NEW, DedupStatus.REPLAY, DedupStatus.CONFLICT

# (stored hash, expires at, body hash, now, expected)
DEDUP_CASES = [
    (None, None, "a", 0.0, NEW),
    ("a", 10.0, "a", 5.0, REPLAY),
    ("a", 10.0, "b", 5.0, CONFLICT),
    ("a", 10.0, "a", 9.999, REPLAY),
    ("a", 10.0, "a", 10.0, NEW),  # live while now < expiry
    ("a", 10.0, "b", 11.0, NEW),  # an expired key is free for any body
]


@pytest.mark.parametrize(("stored", "expires", "body", "now", "expected"), DEDUP_CASES)
def test_dedup_status(
    stored: str | None, expires: float | None, body: str, now: float, expected: DedupStatus
) -> None:
    assert rules.dedup_status(stored, expires, body, now) is expected


def test_a_replay_without_outcome_is_pending() -> None:
    assert DedupResult(REPLAY).pending
    assert not DedupResult(REPLAY, b"").pending
    assert not DedupResult(NEW).pending


# (last applied, seq, verdict, expected next)
ENTITY_CASES = [
    (0, 1, EntityVerdict.APPLY, 2),
    (0, 2, EntityVerdict.GAP, 1),
    (3, 4, EntityVerdict.APPLY, 5),
    (3, 3, EntityVerdict.DUPLICATE, 4),
    (3, 1, EntityVerdict.DUPLICATE, 4),
    (3, 9, EntityVerdict.GAP, 4),
]


@pytest.mark.parametrize(("last", "seq", "verdict", "expected"), ENTITY_CASES)
def test_entity_decision(last: int, seq: int, verdict: EntityVerdict, expected: int) -> None:
    assert rules.entity_decision(last, seq) == EntityDecision(verdict, expected)


# (after_seq, oldest kept or None, last_seq, reset)
RESUME_CASES = [
    (0, None, 0, False),  # empty log, from the start
    (0, 1, 5, False),
    (4, 5, 9, False),  # resumes exactly at the oldest kept
    (3, 5, 9, True),  # 4 was trimmed
    (9, 5, 9, False),  # up to date
    (10, 5, 9, True),  # a seq this log never gave
    (9, None, 9, False),  # all trimmed, nothing missed
    (8, None, 9, True),  # all trimmed, 9 missed
]


@pytest.mark.parametrize(("after", "oldest", "last", "reset"), RESUME_CASES)
def test_resume_reset(after: int, oldest: int | None, last: int, reset: bool) -> None:
    assert rules.is_reset(after, rules.first_seq(oldest, last), last) is reset


@pytest.mark.parametrize(
    ("last", "max_len", "kept_from"), [(10, 4, 7), (3, 4, 1), (0, 4, 1), (10, 0, 11)]
)
def test_size_trim_point(last: int, max_len: int, kept_from: int) -> None:
    assert rules.size_trim_point(last, max_len) == kept_from


@pytest.mark.parametrize(
    ("oldest", "window", "now", "wait"),
    [(0.0, 10.0, 3.0, 7.0), (0.0, 10.0, 9.9999, rules.MIN_RETRY_AFTER_S), (5.0, 10.0, 20.0, 0.001)],
)
def test_retry_after(oldest: float, window: float, now: float, wait: float) -> None:
    assert rules.retry_after_s(oldest, window, now) == pytest.approx(wait)


def test_delivery_attempts_and_errors() -> None:
    assert [rules.goes_dead(n, 3) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert rules.lost_delivery_error(None) == rules.NOT_ACKNOWLEDGED
    assert rules.lost_delivery_error("") == rules.NOT_ACKNOWLEDGED
    assert rules.lost_delivery_error("boom") == f"{rules.NOT_ACKNOWLEDGED} (last error: boom)"


@pytest.mark.parametrize(("ttl_s", "ms"), [(10, 10000), (0.0001, 1), (0.2005, 201)])
def test_ttl_ms_never_shortens(ttl_s: float, ms: int) -> None:
    assert rules.ttl_ms(ttl_s) == ms


def test_require() -> None:
    rules.require(True, "fine")
    with pytest.raises(ValueError, match="seq"):
        rules.require(False, "seq must be at least 1")


@pytest.mark.parametrize(
    "module", ["gateway.store", "gateway.store.records", "gateway.store.rules"]
)
def test_store_core_is_pure(module: str) -> None:
    path = ROOT / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    assert not forbidden_imports(module, tree), module
    assert not environment_reads(tree), module
    project = {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (name := node.module or "").startswith("gateway")
    }
    assert project <= {"gateway.store", "gateway.store.records", "gateway.store.rules"}, project
