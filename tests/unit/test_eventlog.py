"""A user's recent deliveries with increasing seq numbers (gateway.eventlog)."""

from __future__ import annotations

import pytest

from dialog.v1 import message_pb2
from gateway.eventlog import EventLog


def _log(max_len: int, count: int) -> EventLog:
    log = EventLog(max_len)
    for n in range(count):
        msg = message_pb2.Message(id=f"m{n + 1}")
        msg.content.type = "text"
        log.append(msg)
    return log


def test_append_assigns_increasing_seq_and_returns_the_message() -> None:
    log = EventLog(10)
    seqs = []
    for n in range(3):
        msg = message_pb2.Message(id=f"m{n}", seq=99)
        out = log.append(msg)
        assert out is msg
        seqs.append(msg.seq)
    assert seqs == [1, 2, 3]
    assert log.last_seq == 3


# (name, max_len, appended, after_seq, expected seqs or None)
SINCE_CASES = [
    ("empty log", 5, 0, 0, []),
    ("everything", 5, 3, 0, [1, 2, 3]),
    ("later entries", 5, 3, 1, [2, 3]),
    ("since the last seq", 5, 3, 3, []),
    ("since a future seq", 5, 3, 9, []),
    ("full but not trimmed", 3, 3, 0, [1, 2, 3]),
    ("trimmed: 0 is gone", 3, 5, 0, None),
    ("trimmed: a trimmed seq", 3, 5, 1, None),
    ("trimmed: just before the first kept", 3, 5, 2, [3, 4, 5]),
    ("trimmed: the first kept", 3, 5, 3, [4, 5]),
    ("trimmed: the last", 3, 5, 5, []),
    ("one entry kept", 1, 4, 3, [4]),
    ("one entry kept, older seq", 1, 4, 2, None),
]


@pytest.mark.parametrize(
    ("max_len", "appended", "after_seq", "expected"),
    [c[1:] for c in SINCE_CASES],
    ids=[c[0] for c in SINCE_CASES],
)
def test_since(max_len: int, appended: int, after_seq: int, expected: list[int] | None) -> None:
    got = _log(max_len, appended).since(after_seq)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert [m.seq for m in got] == expected
        assert [m.id for m in got] == [f"m{s}" for s in expected]


def test_trimming_keeps_at_most_max_len() -> None:
    log = _log(4, 50)
    kept = log.since(46)
    assert kept is not None
    assert [m.seq for m in kept] == [47, 48, 49, 50]
    assert log.since(45) is None
