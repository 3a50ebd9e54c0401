"""RecentRequests: the pure dedup memory of the adapters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.dedup import Decision, RecentRequests, Seen


def memory(**bounds: int) -> RecentRequests[str]:
    return RecentRequests(len, **bounds)


def test_first_delivery_is_new_then_in_progress_then_done() -> None:
    recent = memory()
    assert recent.begin("u", "m1") == Decision(Seen.NEW)
    assert recent.begin("u", "m1") == Decision(Seen.IN_PROGRESS)
    recent.finish("u", "m1", "final")
    assert recent.begin("u", "m1") == Decision(Seen.DONE, "final")
    assert recent.peek("u", "m1") == Decision(Seen.DONE, "final")


def test_ids_are_per_user() -> None:
    recent = memory()
    recent.begin("alice", "m1")
    recent.finish("alice", "m1", "for alice")
    assert recent.begin("bob", "m1") == Decision(Seen.NEW)


def test_abandoned_id_is_applied_again_but_a_finished_one_is_kept() -> None:
    recent = memory()
    recent.begin("u", "m1")
    recent.abandon("u", "m1")
    assert recent.begin("u", "m1").seen is Seen.NEW
    recent.finish("u", "m1", "x")
    recent.abandon("u", "m1")
    assert recent.peek("u", "m1").seen is Seen.DONE


def test_peek_changes_nothing() -> None:
    recent = memory()
    assert recent.peek("u", "m1").seen is Seen.NEW
    assert recent.peek("u", "m1").seen is Seen.NEW
    assert len(recent) == 0


def test_ids_per_user_bound_forgets_that_users_oldest() -> None:
    recent = memory(ids_per_user=2)
    for msg_id in ("a", "b", "c"):
        recent.begin("u", msg_id)
        recent.finish("u", msg_id, msg_id)
    recent.begin("other", "a")
    assert recent.peek("u", "a").seen is Seen.NEW
    assert recent.peek("u", "b").seen is Seen.DONE
    assert recent.peek("other", "a").seen is Seen.IN_PROGRESS


def test_a_repeat_keeps_an_id_fresh() -> None:
    recent = memory(ids_per_user=2)
    for msg_id in ("a", "b"):
        recent.begin("u", msg_id)
        recent.finish("u", msg_id, msg_id)
    recent.begin("u", "a")  # a redelivery touches "a"
    recent.begin("u", "c")
    assert recent.peek("u", "a").seen is Seen.DONE
    assert recent.peek("u", "b").seen is Seen.NEW


def test_byte_budget_evicts_least_recent_and_skips_oversized() -> None:
    recent = memory(max_bytes=10)
    recent.begin("u1", "a")
    recent.finish("u1", "a", "x" * 6)
    recent.begin("u2", "b")
    recent.finish("u2", "b", "y" * 6)
    assert recent.peek("u1", "a").seen is Seen.NEW
    assert recent.total_bytes == 6
    recent.begin("u3", "c")
    recent.finish("u3", "c", "z" * 11)
    assert recent.peek("u3", "c").seen is Seen.NEW
    assert recent.peek("u2", "b").seen is Seen.DONE


@pytest.mark.parametrize("bounds", [{"ids_per_user": 0}, {"max_entries": 0}, {"max_bytes": -1}])
def test_bounds_must_be_positive(bounds: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        memory(**bounds)


operations = st.lists(
    st.tuples(
        st.sampled_from(["begin", "finish", "abandon"]),
        st.sampled_from(["u1", "u2", "u3"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.text(max_size=5),
    ),
    max_size=60,
)


@given(operations)
def test_bounds_always_hold_and_a_remembered_final_is_the_last_one(ops) -> None:
    recent = memory(ids_per_user=3, max_entries=7, max_bytes=12)
    finals: dict[tuple[str, str], str] = {}
    for op, user, msg_id, value in ops:
        if op == "begin":
            recent.begin(user, msg_id)
        elif op == "finish":
            recent.finish(user, msg_id, value)
            finals[(user, msg_id)] = value
        else:
            recent.abandon(user, msg_id)
        assert len(recent) <= 7
        assert recent.total_bytes <= 12
        for u in ("u1", "u2", "u3"):
            known = [m for m in "abcde" if recent.peek(u, m).seen is not Seen.NEW]
            assert len(known) <= 3
    for (user, msg_id), value in finals.items():
        decision = recent.peek(user, msg_id)
        assert decision.seen is not Seen.DONE or decision.final == value
