"""Tasks in SQLite: a synchronous store, and an asyncio front that runs it
on one dedicated thread (so the event loop never blocks on SQLite).

Every row has an owner, and every query filters on it: a task of another
user is indistinguishable from one that does not exist. A create carries the
request id, unique per owner, so a redelivered request never adds a second
task, even after a restart.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from adapters.tasks.commands import Task

T = TypeVar("T")

MAX_LIST = 1000
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    request_id TEXT,
    UNIQUE (owner, request_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, id);
"""
_COLUMNS = "id, title, done, created_at"


class StoreError(Exception):
    """The task database cannot be opened."""


def _task(row: tuple[int, str, int, str]) -> Task:
    return Task(id=row[0], title=row[1], done=bool(row[2]), created_at=row[3])


class TaskStore:
    """Synchronous SQLite access; use it from one thread only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def create(self, owner: str, title: str, request_id: str | None,
               created_at: str) -> tuple[Task, bool]:
        """Add a task; returns it and whether it is new (False for a repeated request)."""
        with self._db:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO tasks (owner, title, done, created_at, request_id)"
                " VALUES (?, ?, 0, ?, ?)",
                (owner, title, created_at, request_id),
            )
            if cursor.rowcount == 1:
                return Task(cursor.lastrowid or 0, title, False, created_at), True
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE owner = ? AND request_id = ?",
                (owner, request_id),
            ).fetchone()
        return _task(row), False

    def get(self, owner: str, task_id: int) -> Task | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE owner = ? AND id = ?", (owner, task_id)
        ).fetchone()
        return None if row is None else _task(row)

    def list(self, owner: str, limit: int = MAX_LIST) -> list[Task]:
        """The owner's tasks, oldest first, at most ``limit``."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE owner = ? ORDER BY id LIMIT ?", (owner, limit)
        ).fetchall()
        return [_task(row) for row in rows]

    def complete(self, owner: str, task_id: int) -> tuple[Task, bool] | None:
        """Mark a task done; returns it and whether it changed, or None if not found."""
        with self._db:
            cursor = self._db.execute(
                "UPDATE tasks SET done = 1 WHERE owner = ? AND id = ? AND done = 0",
                (owner, task_id),
            )
        task = self.get(owner, task_id)
        return None if task is None else (task, cursor.rowcount == 1)


class TaskDatabase:
    """The asyncio front of ``TaskStore``: every call runs on its own thread."""

    def __init__(self, executor: ThreadPoolExecutor, store: TaskStore) -> None:
        self._executor = executor
        self._store = store

    @classmethod
    async def open(cls, path: Path) -> TaskDatabase:
        """Open (creating the file, its directory and the schema) on a new thread."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tasks-db")
        try:
            loop = asyncio.get_running_loop()
            store = await loop.run_in_executor(executor, TaskStore, path)
        except (OSError, sqlite3.Error) as exc:
            executor.shutdown(wait=False)
            raise StoreError(f"cannot open {str(path)!r} ({exc})") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, store)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def close(self) -> None:
        """Close the connection after every queued call, then end the thread."""
        await self._run(self._store.close)
        self._executor.shutdown(wait=True)

    async def journal_mode(self) -> str:
        return await self._run(self._store.journal_mode)

    async def create(self, owner: str, title: str, request_id: str | None,
                     created_at: str) -> tuple[Task, bool]:
        return await self._run(self._store.create, owner, title, request_id, created_at)

    async def list(self, owner: str) -> list[Task]:
        return await self._run(self._store.list, owner)

    async def complete(self, owner: str, task_id: int) -> tuple[Task, bool] | None:
        return await self._run(self._store.complete, owner, task_id)
