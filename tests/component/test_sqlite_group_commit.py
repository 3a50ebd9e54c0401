"""Group commit in the SQLite store: calls waiting together share one transaction,
one failing call is undone alone, and a result is given only after its commit;
``STORE_SYNC`` picks when a commit is fsynced."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.store.sqlite import DB_NAME, SQLiteStore
from gateway.store.sqlite_db import Database, GroupCommit


def test_a_failing_call_in_a_batch_is_undone_alone(tmp_path: Path) -> None:
    db = Database(tmp_path / DB_NAME, max_attempts=3)

    def boom(d: Database) -> None:
        d.append_event("alice", b"undone", 1.0)
        raise RuntimeError("boom")

    results = db.run_batch(
        [
            lambda d: d.append_event("alice", b"a", 1.0),
            boom,
            lambda d: d.append_event("alice", b"b", 1.0),
        ]
    )
    assert results[0] == (True, 1) and results[2] == (True, 2)
    assert results[1][0] is False and isinstance(results[1][1], RuntimeError)
    page = db.events_after("alice", 0, 10)
    assert [e.body for e in page.events] == [b"a", b"b"]
    db.close()
    # Committed: a fresh connection sees it.
    again = Database(tmp_path / DB_NAME, max_attempts=3)
    assert again.last_event_seq("alice") == 2
    again.close()


def test_a_failed_commit_fails_every_call_of_the_batch(tmp_path: Path) -> None:
    db = Database(tmp_path / DB_NAME, max_attempts=3)
    other = sqlite3.connect(tmp_path / DB_NAME, timeout=0.1, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # holds the write lock: BEGIN IMMEDIATE cannot start
    db._db.execute("PRAGMA busy_timeout = 50")
    results = db.run_batch([lambda d: d.append_event("alice", b"a", 1.0)] * 3)
    assert [ok for ok, _ in results] == [False] * 3
    assert all(isinstance(err, sqlite3.OperationalError) for _, err in results)
    other.execute("ROLLBACK")
    other.close()
    assert db.last_event_seq("alice") == 0
    db.close()


def test_a_call_alone_is_its_own_transaction(tmp_path: Path) -> None:
    db = Database(tmp_path / DB_NAME, max_attempts=3)

    def boom(d: Database) -> None:
        d.append_event("alice", b"undone", 1.0)
        raise RuntimeError("boom")

    [(ok, err)] = db.run_batch([boom])
    assert ok is False and isinstance(err, RuntimeError)
    assert db.last_event_seq("alice") == 0
    # It cannot take the write lock (another connection holds it): it fails, and the
    # connection is ready for the next batch.
    other = sqlite3.connect(tmp_path / DB_NAME, timeout=0.1, isolation_level=None)
    db._db.execute("PRAGMA busy_timeout = 50")
    other.execute("BEGIN EXCLUSIVE")
    [(ok, err)] = db.run_batch([lambda d: d.append_event("alice", b"a", 1.0)])
    assert ok is False and isinstance(err, sqlite3.OperationalError)
    other.execute("ROLLBACK")
    other.close()
    assert db.run_batch([lambda d: d.append_event("alice", b"b", 1.0)]) == [(True, 1)]
    assert [e.body for e in db.events_after("alice", 0, 10).events] == [b"b"]
    db.close()


def test_concurrent_calls_are_batched(tmp_path: Path) -> None:
    db = Database(tmp_path / DB_NAME, max_attempts=3)
    batches: list[int] = []
    run_batch = db.run_batch

    def counting(calls, durable=True):  # type: ignore[no-untyped-def]
        batches.append(len(calls))
        return run_batch(calls, durable)

    db.run_batch = counting  # type: ignore[method-assign]
    commits = GroupCommit(db)
    futures = [
        commits.submit(lambda d, i=i: d.append_event("alice", b"%d" % i, 1.0)) for i in range(200)
    ]
    assert sorted(f.result(timeout=10) for f in futures) == list(range(1, 201))
    commits.close()
    assert sum(batches) == 200
    assert len(batches) < 200  # calls that waited together shared a commit


def test_a_call_cancelled_before_it_ran_is_skipped_and_the_thread_lives_on(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / DB_NAME, max_attempts=3)
    commits = GroupCommit(db)
    futures = [
        commits.submit(lambda d, i=i: d.append_event("alice", b"%d" % i, 1.0)) for i in range(50)
    ]
    cancelled = [f for f in futures if f.cancel()]
    done = [f.result(timeout=10) for f in futures if f not in cancelled]
    assert sorted(done) == list(range(1, len(done) + 1))  # skipped calls took no seq
    after = commits.submit(lambda d: d.append_event("alice", b"after", 1.0))
    assert after.result(timeout=10) == len(done) + 1
    commits.close()


async def test_the_store_answers_after_close_with_store_unavailable(tmp_path: Path) -> None:
    from gateway.errors import StoreUnavailable

    store = await SQLiteStore.open(tmp_path / DB_NAME)
    seqs = await asyncio.gather(*(store.append_event("bob", b"x") for _ in range(20)))
    assert sorted(seqs) == list(range(1, 21))
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.append_event("bob", b"x")


@pytest.mark.parametrize(("sync", "pragma"), [("full", "2"), ("normal", "1")])
def test_the_sync_mode_sets_when_a_commit_is_fsynced(
    tmp_path: Path, sync: str, pragma: str
) -> None:
    db = Database(tmp_path / DB_NAME, max_attempts=3, sync=sync)
    try:
        assert db.pragma("synchronous") == pragma
        assert db.pragma("journal_mode") == "wal"
    finally:
        db.close()


async def test_an_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync must be one of"):
        await SQLiteStore.open(tmp_path / DB_NAME, sync="sometimes")


def test_a_batch_that_asks_for_no_durability_is_not_fsynced_on_its_own(tmp_path: Path) -> None:
    db = Database(tmp_path / DB_NAME, max_attempts=3, sync="full")
    seen: list[str] = []

    def append(d: Database) -> int:
        seen.append(d.pragma("synchronous"))
        return d.append_event("alice", b"delta", 1.0)

    try:
        assert [ok for ok, _ in db.run_batch([append], durable=False)] == [True]
        assert [ok for ok, _ in db.run_batch([append])] == [True]
        assert seen == ["1", "2"]  # NORMAL for that commit alone, then FULL again
        assert db.pragma("synchronous") == "2"
    finally:
        db.close()


def test_a_batch_is_durable_when_one_of_its_calls_is(tmp_path: Path) -> None:
    db = Database(tmp_path / DB_NAME, max_attempts=3, sync="full")
    batches: list[tuple[int, bool]] = []
    run_batch = db.run_batch

    def recording(calls, durable=True):  # type: ignore[no-untyped-def]
        batches.append((len(calls), durable))
        return run_batch(calls, durable)

    db.run_batch = recording  # type: ignore[method-assign]
    commits = GroupCommit(db)
    started, release = threading.Event(), threading.Event()

    def block(d: Database) -> bool:
        started.set()
        return release.wait(10)

    blocker = commits.submit(block, durable=False)
    assert started.wait(10)
    # Queued while the store's thread is busy: the next batch takes both.
    delta = commits.submit(lambda d: d.append_event("alice", b"delta", 1.0), durable=False)
    final = commits.submit(lambda d: d.append_event("alice", b"final", 1.0))
    release.set()
    assert (blocker.result(timeout=10), delta.result(timeout=10), final.result(timeout=10)) == (
        True,
        1,
        2,
    )
    commits.close()
    assert batches == [(1, False), (2, True)]
