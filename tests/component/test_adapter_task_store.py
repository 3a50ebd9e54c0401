"""The tasks store on a real SQLite file, through its asyncio front."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.tasks.store import StoreError, TaskDatabase

NOW = "2024-01-01T00:00:00.000Z"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[TaskDatabase]:
    database = await TaskDatabase.open(tmp_path / "tasks.db")
    yield database
    await database.close()


async def test_create_is_idempotent_per_owner_and_request(db: TaskDatabase) -> None:
    first, new = await db.create("alice", "a", "req-1", NOW)
    again, new_again = await db.create("alice", "a (retry)", "req-1", NOW)
    bobs, bob_new = await db.create("bob", "b", "req-1", NOW)
    assert (new, new_again, bob_new) == (True, False, True)
    assert again == first
    assert bobs.id != first.id
    untracked = [await db.create("alice", "x", None, NOW) for _ in range(2)]
    assert [created for _, created in untracked] == [True, True]
    assert len(await db.list("alice")) == 3


async def test_complete_reports_change_and_respects_the_owner(db: TaskDatabase) -> None:
    task, _ = await db.create("alice", "a", "r", NOW)
    assert await db.complete("bob", task.id) is None
    done, changed = await db.complete("alice", task.id) or (None, None)
    assert done is not None and done.done and changed is True
    _, changed_again = await db.complete("alice", task.id) or (None, None)
    assert changed_again is False
    assert await db.complete("alice", task.id + 1) is None


async def test_concurrent_creates_are_all_kept(db: TaskDatabase) -> None:
    results = await asyncio.gather(*(db.create("u", f"t{i}", f"r{i}", NOW) for i in range(50)))
    assert all(new for _, new in results)
    assert sorted(t.title for t in await db.list("u")) == sorted(f"t{i}" for i in range(50))


async def test_open_fails_cleanly_when_the_path_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open"):
        await TaskDatabase.open(blocker / "tasks.db")
