"""The typed ``dialog.tasks.v1.Tasks`` servicer (asyncio shell).

Each call reads the caller from the ``x-dialog-user`` metadata, checks its
request with ``adapters.tasks.rules``, then reads or changes the caller's
tasks through the ``TaskBook`` that Converse uses too. ``_answer`` is the one
place where refusals become gRPC statuses and where an unexpected failure is
logged and answered INTERNAL with a generic message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias, TypeVar, cast

import grpc
from google.protobuf import empty_pb2

from adapters.envelope import INTERNAL_ERROR_TEXT, USER_METADATA_KEY, user_from_metadata
from adapters.tasks.book import TaskBook
from adapters.tasks.feed import FellBehind, TooManyWatchers
from adapters.tasks.rules import (
    InvalidArgument,
    Refused,
    TaskNotFound,
    decode_page_token,
    read_page_size,
    read_request_id,
    read_task_id,
    read_title,
    read_update,
    split_page,
    task_message,
)
from dialog.tasks.v1 import tasks_pb2, tasks_pb2_grpc

T = TypeVar("T")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

logger = logging.getLogger(__name__)

TASKS_SERVICE_NAME: str = tasks_pb2.DESCRIPTOR.services_by_name["Tasks"].full_name
DEFAULT_WRITE_TIMEOUT_S = 30.0
FELL_BEHIND_TEXT = "the watch fell behind the changes; list the tasks again, then watch again"
TOO_MANY_WATCHES_TEXT = "too many watches open for this user"
STALLED_TEXT = "client stopped reading changes"

_STATUS: dict[type[Refused], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    TaskNotFound: grpc.StatusCode.NOT_FOUND,
}


class TypedTasksServicer:
    """Creates, reads, lists, updates, completes, deletes and watches the caller's tasks."""

    def __init__(self, book: TaskBook, *, write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S) -> None:
        self._book = book
        self._write_timeout_s = write_timeout_s

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register this servicer on ``server`` (before it starts)."""
        cast("Any", tasks_pb2_grpc).add_TasksServicer_to_server(self, server)

    async def CreateTask(
        self, request: tasks_pb2.CreateTaskRequest, context: Context
    ) -> tasks_pb2.CreateTaskResponse:
        async def create(user: str) -> tasks_pb2.CreateTaskResponse:
            title = read_title(request.task.title)
            request_id = read_request_id(request.request_id)
            task, _ = await self._book.create(user, title, request_id)
            return tasks_pb2.CreateTaskResponse(task=task_message(task))

        return await self._answer(context, create)

    async def GetTask(
        self, request: tasks_pb2.GetTaskRequest, context: Context
    ) -> tasks_pb2.GetTaskResponse:
        async def get(user: str) -> tasks_pb2.GetTaskResponse:
            task_id = read_task_id(request.id)
            task = await self._book.db.get(user, task_id)
            if task is None:
                raise TaskNotFound(task_id)
            return tasks_pb2.GetTaskResponse(task=task_message(task))

        return await self._answer(context, get)

    async def ListTasks(
        self, request: tasks_pb2.ListTasksRequest, context: Context
    ) -> tasks_pb2.ListTasksResponse:
        async def list_page(user: str) -> tasks_pb2.ListTasksResponse:
            size = read_page_size(request.page_size)
            after_id = decode_page_token(request.page_token)
            rows = await self._book.db.page(user, after_id, size + 1)
            page, next_token = split_page(rows, size)
            return tasks_pb2.ListTasksResponse(
                tasks=[task_message(t) for t in page], next_page_token=next_token
            )

        return await self._answer(context, list_page)

    async def UpdateTask(
        self, request: tasks_pb2.UpdateTaskRequest, context: Context
    ) -> tasks_pb2.UpdateTaskResponse:
        async def update(user: str) -> tasks_pb2.UpdateTaskResponse:
            task_id = read_task_id(request.task.id)
            change = read_update(request.task, list(request.update_mask.paths))
            task = await self._book.update(user, task_id, change)
            if task is None:
                raise TaskNotFound(task_id)
            return tasks_pb2.UpdateTaskResponse(task=task_message(task))

        return await self._answer(context, update)

    async def CompleteTask(
        self, request: tasks_pb2.CompleteTaskRequest, context: Context
    ) -> tasks_pb2.CompleteTaskResponse:
        async def complete(user: str) -> tasks_pb2.CompleteTaskResponse:
            task_id = read_task_id(request.id)
            found = await self._book.complete(user, task_id)
            if found is None:
                raise TaskNotFound(task_id)
            return tasks_pb2.CompleteTaskResponse(task=task_message(found[0]))

        return await self._answer(context, complete)

    async def DeleteTask(
        self, request: tasks_pb2.DeleteTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        async def delete(user: str) -> empty_pb2.Empty:
            task_id = read_task_id(request.id)
            if await self._book.delete(user, task_id) is None:
                raise TaskNotFound(task_id)
            return empty_pb2.Empty()

        return await self._answer(context, delete)

    async def Watch(self, request: tasks_pb2.WatchRequest, context: Context) -> None:
        """Stream the caller's changes until the call is cancelled.

        The response headers are sent once the watch is live: every change
        stored after they arrive is streamed.
        """
        user = await self._caller(context)
        try:
            with self._book.feed.watch(user) as watcher:
                await context.send_initial_metadata(())
                while True:  # until the caller cancels the call
                    change = await watcher.next()
                    response = tasks_pb2.WatchResponse(
                        change_type=change.change, task=task_message(change.task)
                    )
                    async with asyncio.timeout(self._write_timeout_s):
                        await context.write(response)
        except TooManyWatchers:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_WATCHES_TEXT)
        except FellBehind:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, FELL_BEHIND_TEXT)
        except TimeoutError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, STALLED_TEXT)

    async def _caller(self, context: Context) -> str:
        """The caller's identity; a call without one ends UNAUTHENTICATED."""
        # At run time grpc.aio hands over (key, value) pairs, whatever the stubs say.
        metadata = cast("Iterable[tuple[str, str | bytes]] | None", context.invocation_metadata())
        user = user_from_metadata(metadata)
        if user is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"missing {USER_METADATA_KEY} metadata"
            )
        return user

    async def _answer(self, context: Context, work: Callable[[str], Awaitable[T]]) -> T:
        """Run ``work`` for the caller; refusals and failures end the call with a status."""
        user = await self._caller(context)
        try:
            return await work(user)
        except Refused as exc:
            await context.abort(_STATUS[type(exc)], str(exc))
        except Exception:
            logger.exception("tasks call failed")
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_TEXT)
