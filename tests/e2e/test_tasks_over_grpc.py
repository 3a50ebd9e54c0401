"""Every ``dialog.tasks.v1.Tasks`` method through the gateway's public gRPC port with
``grpc.aio``: the gateway relays them to the reference tasks back-end as the verified user."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2

from dialog.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from tests.support.stack import Stack

TIMEOUT_S = 10


def metadata(stack: Stack, user: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack.token(user)}"),)


async def test_every_tasks_method_through_the_gateway(stack: Stack) -> None:
    creds = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    async with grpc.aio.secure_channel(stack.grpc_target, creds) as channel:
        tasks = tasks_pb2_grpc.TasksStub(channel)
        me = metadata(stack, "grpc-tasks-user")
        watch = tasks.Watch(tasks_pb2.WatchRequest(), metadata=me, timeout=TIMEOUT_S)
        await watch.initial_metadata()  # live once the headers are in

        created = await tasks.CreateTask(
            tasks_pb2.CreateTaskRequest(task=tasks_pb2.Task(title="buy milk")),
            metadata=me,
            timeout=TIMEOUT_S,
        )
        task_id = created.task.id
        change = await asyncio.wait_for(watch.read(), TIMEOUT_S)
        assert (change.change_type, change.task.id) == (tasks_pb2.CHANGE_TYPE_CREATED, task_id)

        got = await tasks.GetTask(tasks_pb2.GetTaskRequest(id=task_id), metadata=me)
        assert got.task.title == "buy milk"
        for title in ("bread", "eggs"):
            await tasks.CreateTask(
                tasks_pb2.CreateTaskRequest(task=tasks_pb2.Task(title=title)), metadata=me
            )
        first = await tasks.ListTasks(tasks_pb2.ListTasksRequest(page_size=2), metadata=me)
        rest = await tasks.ListTasks(
            tasks_pb2.ListTasksRequest(page_size=2, page_token=first.next_page_token), metadata=me
        )
        assert [t.title for t in (*first.tasks, *rest.tasks)] == ["buy milk", "bread", "eggs"]
        assert not rest.next_page_token

        updated = await tasks.UpdateTask(
            tasks_pb2.UpdateTaskRequest(
                task=tasks_pb2.Task(id=task_id, title="oat milk"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            ),
            metadata=me,
        )
        assert updated.task.title == "oat milk"
        done = await tasks.CompleteTask(tasks_pb2.CompleteTaskRequest(id=task_id), metadata=me)
        assert done.task.done
        await tasks.DeleteTask(tasks_pb2.DeleteTaskRequest(id=task_id), metadata=me)

        # Another user's task does not exist for this one; a deleted one neither.
        for user, wanted in (("grpc-tasks-other", first.tasks[1].id), ("grpc-tasks-user", task_id)):
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await tasks.GetTask(
                    tasks_pb2.GetTaskRequest(id=wanted), metadata=metadata(stack, user)
                )
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
            await tasks.ListTasks(tasks_pb2.ListTasksRequest())
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED

        kinds = [(await asyncio.wait_for(watch.read(), TIMEOUT_S)).change_type for _ in range(5)]
        assert kinds == [
            tasks_pb2.CHANGE_TYPE_CREATED,
            tasks_pb2.CHANGE_TYPE_CREATED,
            tasks_pb2.CHANGE_TYPE_UPDATED,
            tasks_pb2.CHANGE_TYPE_COMPLETED,
            tasks_pb2.CHANGE_TYPE_DELETED,
        ]
        watch.cancel()
