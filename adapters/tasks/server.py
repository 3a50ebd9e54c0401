"""The tasks adapter process: the Backend servicer and ``run``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from adapters.base import (
    TASKS_DEFAULT_PORT,
    AdapterConfig,
    ConverseLimits,
    ConverseServicer,
    Message,
    env_str,
    error_reply,
    serve,
)
from adapters.tasks.commands import (
    COMPLETED,
    CREATED,
    CompleteTask,
    CreateTask,
    ListTasks,
    Rejected,
    iso_utc,
    list_reply,
    not_found,
    parse_command,
    task_replies,
)
from adapters.tasks.store import StoreError, TaskDatabase

DEFAULT_DB = "data/tasks.db"


class TasksServicer(ConverseServicer):
    """Creates, lists and completes the caller's tasks."""

    def __init__(
        self,
        db: TaskDatabase,
        limits: ConverseLimits | None = None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(limits, clock_ns=clock_ns)
        self._db = db
        self._now_ns = clock_ns

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
            created_at = iso_utc(self._now_ns())
            task, new = await self._db.create(user, command.title, msg.id or None, created_at)
            return task_replies(task, changed=new, event_type=CREATED)
        return await self._complete(user, command)

    async def _complete(self, user: str, command: CompleteTask) -> list[Message]:
        found = await self._db.complete(user, command.task_id)
        if found is None:
            return [not_found(command.task_id)]
        task, changed = found
        return task_replies(task, changed=changed, event_type=COMPLETED)


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
        await serve(TasksServicer(db, limits), config)
    finally:
        await db.close()
