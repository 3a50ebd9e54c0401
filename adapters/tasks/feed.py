"""The in-process feed of task changes that ``Tasks.Watch`` streams (asyncio shell).

Every change made through this process (the typed RPCs and Converse) is
published once it is stored. Each watcher has a bounded queue; publishing
never waits: a watcher whose queue is full is marked as fallen behind and
dropped from the feed, and its stream ends (the caller lists again and watches
again). A user may hold a bounded number of watchers at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from adapters.tasks.commands import Task
from dialog.tasks.v1 import tasks_pb2

DEFAULT_QUEUE_SIZE = 256
DEFAULT_WATCHERS_PER_USER = 32


@dataclass(frozen=True)
class TaskChanged:
    """A stored change to one of ``user``'s tasks (the task after it, or before a deletion)."""

    user: str
    change: tasks_pb2.ChangeType
    task: Task


class FellBehind(Exception):
    """The watcher did not take its changes fast enough; some were dropped."""


class TooManyWatchers(Exception):
    """The user already holds as many watchers as the feed allows."""


class Watcher:
    """One ``Watch`` call's view of the feed."""

    def __init__(self, queue_size: int) -> None:
        self._queue: asyncio.Queue[TaskChanged] = asyncio.Queue(queue_size)
        self._fell_behind = False

    def offer(self, change: TaskChanged) -> bool:
        """Queue a change without waiting; False (and fallen behind) when the queue is full."""
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            self._fell_behind = True
            return False
        return True

    async def next(self) -> TaskChanged:
        """The next change, in the order published; raises ``FellBehind`` once one was lost."""
        if self._fell_behind:
            raise FellBehind
        return await self._queue.get()


class ChangeFeed:
    """Fans each user's task changes out to that user's watchers only."""

    def __init__(
        self,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        watchers_per_user: int = DEFAULT_WATCHERS_PER_USER,
    ) -> None:
        if min(queue_size, watchers_per_user) <= 0:
            raise ValueError("ChangeFeed bounds must be positive")
        self._queue_size = queue_size
        self._watchers_per_user = watchers_per_user
        self._by_user: dict[str, set[Watcher]] = {}

    def watchers(self, user: str | None = None) -> int:
        """How many watchers are open: the user's, or everyone's."""
        if user is not None:
            return len(self._by_user.get(user, ()))
        return sum(len(watchers) for watchers in self._by_user.values())

    def publish(self, change: TaskChanged) -> None:
        """Hand ``change`` to each of its user's watchers; never waits."""
        watchers = self._by_user.get(change.user)
        for watcher in list(watchers or ()):
            if not watcher.offer(change):
                self._remove(change.user, watcher)

    @contextmanager
    def watch(self, user: str) -> Iterator[Watcher]:
        """A watcher of ``user``'s changes from now on, removed when the block ends."""
        watchers = self._by_user.setdefault(user, set())
        if len(watchers) >= self._watchers_per_user:
            raise TooManyWatchers
        watcher = Watcher(self._queue_size)
        watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._remove(user, watcher)

    def _remove(self, user: str, watcher: Watcher) -> None:
        watchers = self._by_user.get(user)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._by_user[user]
