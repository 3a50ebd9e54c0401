"""The caller's tasks as both services see them (asyncio shell).

``TaskBook`` stores each change in the ``TaskDatabase`` and then publishes it
on the ``ChangeFeed``, so that ``Tasks.Watch`` sees every change whichever
service (``Backend.Converse`` or the typed ``Tasks``) made it. A repeated
create and a change that changes nothing are not published.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from adapters.tasks.commands import Task, iso_utc
from adapters.tasks.feed import ChangeFeed, TaskChanged
from adapters.tasks.rules import TaskUpdate, change_of_update
from adapters.tasks.store import TaskDatabase
from dialog.tasks.v1 import tasks_pb2


class TaskBook:
    """Reads and changes one user's tasks at a time, and announces the changes."""

    def __init__(
        self,
        db: TaskDatabase,
        feed: ChangeFeed,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.db = db
        self.feed = feed
        self._clock_ns = clock_ns

    def _now(self) -> str:
        return iso_utc(self._clock_ns())

    async def create(self, user: str, title: str, request_id: str | None) -> tuple[Task, bool]:
        """Add a task; returns it and whether it is new (False for a repeated request id)."""
        task, new = await self.db.create(user, title, request_id, self._now())
        if new:
            self.feed.publish(TaskChanged(user, tasks_pb2.CHANGE_TYPE_CREATED, task))
        return task, new

    async def update(self, user: str, task_id: int, update: TaskUpdate) -> Task | None:
        """Apply ``update``; returns the task after it, or None if the user has no such task."""
        changed = await self.db.update(user, task_id, update, self._now())
        if changed is None:
            return None
        before, after = changed
        change = change_of_update(before, after)
        if change is not None:
            self.feed.publish(TaskChanged(user, change, after))
        return after

    async def complete(self, user: str, task_id: int) -> tuple[Task, bool] | None:
        """Mark a task done; returns it and whether it changed, or None if not found."""
        changed = await self.db.update(user, task_id, TaskUpdate(done=True), self._now())
        if changed is None:
            return None
        before, after = changed
        if after != before:
            self.feed.publish(TaskChanged(user, tasks_pb2.CHANGE_TYPE_COMPLETED, after))
        return after, after != before

    async def delete(self, user: str, task_id: int) -> Task | None:
        """Remove a task; returns its last state, or None if not found."""
        task = await self.db.delete(user, task_id)
        if task is not None:
            self.feed.publish(TaskChanged(user, tasks_pb2.CHANGE_TYPE_DELETED, task))
        return task
