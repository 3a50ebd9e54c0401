"""Tasks in SQLite: a synchronous store, and an asyncio front that runs it
on one dedicated thread (so the event loop never blocks on SQLite).

Every row has an owner, and every query filters on it: a task of another
user is indistinguishable from one that does not exist. A create carries the
request id, unique per owner, so a redelivered request never adds a second
task, even after a restart. A change reads and writes the row in one
immediate transaction, so that processes sharing the file never lose one.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from adapters.tasks.commands import Task
from adapters.tasks.rules import TaskUpdate, apply_update

T = TypeVar("T")
TaskList = list[Task]  # the classes below have a method named "list"

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
    updated_at TEXT,
    completed_at TEXT,
    UNIQUE (owner, request_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, id);
"""
# Columns added after the first schema: a database made before them gets them on open.
ADDED_COLUMNS = ("updated_at", "completed_at")
# SQLite's own clock, as ``iso_utc`` writes it, for a change made without a time.
SQL_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
_COLUMNS = "id, title, done, created_at, COALESCE(updated_at, ''), COALESCE(completed_at, '')"


class StoreError(Exception):
    """The task database cannot be opened."""


def _task(row: tuple[int, str, int, str, str, str]) -> Task:
    return Task(id=row[0], title=row[1], done=bool(row[2]), created_at=row[3],
                updated_at=row[4], completed_at=row[5])


class TaskStore:
    """Synchronous SQLite access; use it from one thread only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        for column in ADDED_COLUMNS:
            if column in present:
                continue
            try:
                self._db.execute(f"ALTER TABLE tasks ADD COLUMN {column} TEXT")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):  # another process added it first
                    raise
        self._db.commit()

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """One write transaction, taken before its first read (BEGIN IMMEDIATE)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            yield

    def close(self) -> None:
        self._db.close()

    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def create(self, owner: str, title: str, request_id: str | None,
               created_at: str) -> tuple[Task, bool]:
        """Add a task; returns it and whether it is new (False for a repeated request)."""
        with self._db:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO tasks"
                " (owner, title, done, created_at, updated_at, request_id)"
                " VALUES (?, ?, 0, ?, ?, ?)",
                (owner, title, created_at, created_at, request_id),
            )
            if cursor.rowcount == 1:
                return Task(cursor.lastrowid or 0, title, False, created_at, created_at), True
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

    def page(self, owner: str, after_id: int, limit: int) -> TaskList:
        """At most ``limit`` of the owner's tasks with an id above ``after_id``, oldest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE owner = ? AND id > ? ORDER BY id LIMIT ?",
            (owner, after_id, limit),
        ).fetchall()
        return [_task(row) for row in rows]

    def update(self, owner: str, task_id: int, update: TaskUpdate,
               changed_at: str | None = None) -> tuple[Task, Task] | None:
        """Apply ``update``; returns the task before and after, or None if not found.

        ``changed_at`` (ISO 8601 UTC) defaults to SQLite's clock. A change that
        changes nothing writes nothing: both tasks are then equal.
        """
        with self._immediate():
            before = self.get(owner, task_id)
            if before is None:
                return None
            if changed_at is None:
                changed_at = str(self._db.execute(f"SELECT {SQL_NOW}").fetchone()[0])
            after = apply_update(before, update, changed_at)
            if after != before:
                self._db.execute(
                    "UPDATE tasks SET title = ?, done = ?, updated_at = ?, completed_at = ?"
                    " WHERE owner = ? AND id = ?",
                    (after.title, int(after.done), after.updated_at,
                     after.completed_at or None, owner, task_id),
                )
        return before, after

    def complete(self, owner: str, task_id: int,
                 changed_at: str | None = None) -> tuple[Task, bool] | None:
        """Mark a task done; returns it and whether it changed, or None if not found."""
        changed = self.update(owner, task_id, TaskUpdate(done=True), changed_at)
        return None if changed is None else (changed[1], changed[1] != changed[0])

    def delete(self, owner: str, task_id: int) -> Task | None:
        """Remove a task; returns its last state, or None if not found."""
        with self._immediate():
            task = self.get(owner, task_id)
            if task is not None:
                self._db.execute("DELETE FROM tasks WHERE owner = ? AND id = ?", (owner, task_id))
        return task


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

    async def get(self, owner: str, task_id: int) -> Task | None:
        return await self._run(self._store.get, owner, task_id)

    async def page(self, owner: str, after_id: int, limit: int) -> TaskList:
        return await self._run(self._store.page, owner, after_id, limit)

    async def update(self, owner: str, task_id: int, update: TaskUpdate,
                     changed_at: str | None = None) -> tuple[Task, Task] | None:
        return await self._run(self._store.update, owner, task_id, update, changed_at)

    async def complete(self, owner: str, task_id: int,
                       changed_at: str | None = None) -> tuple[Task, bool] | None:
        return await self._run(self._store.complete, owner, task_id, changed_at)

    async def delete(self, owner: str, task_id: int) -> Task | None:
        return await self._run(self._store.delete, owner, task_id)
