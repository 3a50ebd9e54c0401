"""The tasks adapter process: the Backend servicer, the wiring of both services, and ``run``.

One process serves ``dialog.backend.v1.Backend`` (``TasksServicer``) and the
typed ``dialog.tasks.v1.Tasks`` (``TypedTasksServicer``) over the same
database and the same change feed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from adapters.base import (
    BACKEND_SERVICE_NAME,
    TASKS_DEFAULT_PORT,
    AdapterConfig,
    ConverseLimits,
    ConverseServicer,
    Message,
    RunningServer,
    env_str,
    error_reply,
    serve,
    start,
)
from adapters.tasks.book import TaskBook
from adapters.tasks.commands import (
    COMPLETED,
    CREATED,
    CompleteTask,
    CreateTask,
    ListTasks,
    Rejected,
    list_reply,
    not_found,
    parse_command,
    task_replies,
)
from adapters.tasks.feed import ChangeFeed
from adapters.tasks.store import StoreError, TaskDatabase
from adapters.tasks.typed import TASKS_SERVICE_NAME, TypedTasksServicer

DEFAULT_DB = "data/tasks.db"
SERVICE_NAMES = (BACKEND_SERVICE_NAME, TASKS_SERVICE_NAME)


class TasksServicer(ConverseServicer):
    """Creates, lists and completes the caller's tasks.

    Changes are announced on ``feed`` (a feed of its own when none is given).
    """

    def __init__(
        self,
        db: TaskDatabase,
        limits: ConverseLimits | None = None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        feed: ChangeFeed | None = None,
    ) -> None:
        super().__init__(limits, clock_ns=clock_ns)
        self._db = db
        self._book = TaskBook(db, feed if feed is not None else ChangeFeed(), clock_ns=clock_ns)

    async def handle(self, msg: Message, user: str) -> AsyncIterator[Message]:
        for out in await self._execute(msg, user):
            yield out

    async def _execute(self, msg: Message, user: str) -> list[Message]:
        command = parse_command(msg)
        if isinstance(command, Rejected):
            return [error_reply(command.text)]
        if isinstance(command, ListTasks):
            return [list_reply(await self._db.list(user))]
        if isinstance(command, CreateTask):
            task, new = await self._book.create(user, command.title, msg.id or None)
            return task_replies(task, changed=new, event_type=CREATED)
        return await self._complete(user, command)

    async def _complete(self, user: str, command: CompleteTask) -> list[Message]:
        found = await self._book.complete(user, command.task_id)
        if found is None:
            return [not_found(command.task_id)]
        task, changed = found
        return task_replies(task, changed=changed, event_type=COMPLETED)


@dataclass(frozen=True)
class TasksAdapter:
    """Both services of the tasks adapter, sharing one database and one change feed."""

    converse: TasksServicer
    typed: TypedTasksServicer
    feed: ChangeFeed

    @classmethod
    def build(
        cls,
        db: TaskDatabase,
        limits: ConverseLimits | None = None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        feed: ChangeFeed | None = None,
    ) -> TasksAdapter:
        """Both servicers over ``db``, sharing ``feed`` (a default feed when none is given)."""
        feed = feed if feed is not None else ChangeFeed()
        return cls(
            converse=TasksServicer(db, limits, clock_ns=clock_ns, feed=feed),
            typed=TypedTasksServicer(TaskBook(db, feed, clock_ns=clock_ns)),
            feed=feed,
        )

    async def start(self, config: AdapterConfig) -> RunningServer:
        """Serve both services (with health and reflection for each) behind mutual TLS."""
        return await start(
            self.converse, config, service_names=SERVICE_NAMES,
            add_services=(self.typed.add_to_server,),
        )

    async def serve(self, config: AdapterConfig) -> None:
        """Serve both services until SIGTERM or SIGINT."""
        await serve(
            self.converse, config, service_names=SERVICE_NAMES,
            add_services=(self.typed.add_to_server,),
        )


async def run(env: Mapping[str, str]) -> None:
    """Run the tasks adapter until SIGTERM or SIGINT.

    Reads ``TASKS_HOST``, ``TASKS_PORT`` (50062), ``TASKS_CERT_FILE``,
    ``TASKS_KEY_FILE``, ``MESH_CA_FILE``, ``MAX_MESSAGE_BYTES`` and ``TASKS_DB``
    (data/tasks.db) from ``env``. Raises ``ValueError`` naming a bad variable.
    """
    config = AdapterConfig.from_env("tasks", env, TASKS_DEFAULT_PORT)
    try:
        db = await TaskDatabase.open(Path(env_str(env, "TASKS_DB", DEFAULT_DB)))
    except StoreError as exc:
        raise ValueError(f"TASKS_DB: {exc}") from exc
    try:
        limits = ConverseLimits(max_message_bytes=config.max_message_bytes)
        await TasksAdapter.build(db, limits).serve(config)
    finally:
        await db.close()
