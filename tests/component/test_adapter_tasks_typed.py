"""The typed dialog.tasks.v1.Tasks service of the tasks adapter, over real gRPC with mutual
TLS, next to its Backend.Converse, on a real SQLite file."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adapters.base import AdapterConfig, RunningServer
from adapters.tasks.commands import Task
from adapters.tasks.feed import ChangeFeed, FellBehind, TaskChanged
from adapters.tasks.server import TasksAdapter
from adapters.tasks.store import TaskDatabase
from dialog.tasks.v1 import tasks_pb2, tasks_pb2_grpc

CALL_TIMEOUT_S = 10.0
WAIT_S = 10.0
START_NS = 1_700_000_000_000_000_000
TASKS_SERVICE = "dialog.tasks.v1.Tasks"

CREATED = tasks_pb2.CHANGE_TYPE_CREATED
UPDATED = tasks_pb2.CHANGE_TYPE_UPDATED
COMPLETED = tasks_pb2.CHANGE_TYPE_COMPLETED
DELETED = tasks_pb2.CHANGE_TYPE_DELETED


def ticking_clock() -> Callable[[], int]:
    """A clock that moves one second at every reading, so that each change has its own time."""
    ticks = itertools.count()
    return lambda: START_NS + next(ticks) * 1_000_000_000


@dataclass
class Tasks:
    """A running tasks adapter: its feed and a way to call it as any user."""

    adapter: TasksAdapter
    server: RunningServer
    channel: grpc.aio.Channel

    def stub(self) -> tasks_pb2_grpc.TasksStub:
        return tasks_pb2_grpc.TasksStub(self.channel)

    def as_user(self, user: str | None) -> Caller:
        return Caller(self.stub(), user)


class Caller:
    """Calls the typed service with ``x-dialog-user`` set as the gateway sets it."""

    def __init__(self, stub: tasks_pb2_grpc.TasksStub, user: str | None) -> None:
        self.stub = stub
        self.metadata = () if user is None else (("x-dialog-user", user),)

    async def create(self, title: str, request_id: str = "") -> tasks_pb2.Task:
        request = tasks_pb2.CreateTaskRequest(
            task=tasks_pb2.Task(title=title), request_id=request_id
        )
        response = await self.stub.CreateTask(
            request, metadata=self.metadata, timeout=CALL_TIMEOUT_S
        )
        return response.task

    async def get(self, task_id: str) -> tasks_pb2.Task:
        response = await self.stub.GetTask(
            tasks_pb2.GetTaskRequest(id=task_id), metadata=self.metadata, timeout=CALL_TIMEOUT_S
        )
        return response.task

    async def list(self, page_size: int = 0, page_token: str = "") -> tasks_pb2.ListTasksResponse:
        request = tasks_pb2.ListTasksRequest(page_size=page_size, page_token=page_token)
        return await self.stub.ListTasks(request, metadata=self.metadata, timeout=CALL_TIMEOUT_S)

    async def update(self, task: tasks_pb2.Task, *paths: str) -> tasks_pb2.Task:
        request = tasks_pb2.UpdateTaskRequest(
            task=task, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        )
        response = await self.stub.UpdateTask(
            request, metadata=self.metadata, timeout=CALL_TIMEOUT_S
        )
        return response.task

    async def complete(self, task_id: str) -> tasks_pb2.Task:
        response = await self.stub.CompleteTask(
            tasks_pb2.CompleteTaskRequest(id=task_id), metadata=self.metadata,
            timeout=CALL_TIMEOUT_S,
        )
        return response.task

    async def delete(self, task_id: str) -> empty_pb2.Empty:
        return await self.stub.DeleteTask(
            tasks_pb2.DeleteTaskRequest(id=task_id), metadata=self.metadata,
            timeout=CALL_TIMEOUT_S,
        )

    async def watch(self) -> Any:
        """An open Watch call, live once this returns (its headers arrived)."""
        call = self.stub.Watch(tasks_pb2.WatchRequest(), metadata=self.metadata)
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await call.initial_metadata()
        return call


async def next_change(call: Any) -> tuple[int, tasks_pb2.Task]:
    async with asyncio.timeout(CALL_TIMEOUT_S):
        response = await call.read()
    assert response is not grpc.aio.EOF, "the watch ended"
    return response.change_type, response.task


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error a call ends with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` every few milliseconds until it holds, or fail at the deadline."""
    async with asyncio.timeout(timeout_s):
        while True:  # until the condition holds or the deadline cancels the wait
            if condition():
                return
            await asyncio.sleep(0.005)


def tasks_config(pki: Path) -> AdapterConfig:
    return AdapterConfig(
        name="tasks",
        host="127.0.0.1",
        port=0,
        cert_file=str(pki / "tasks.pem"),
        key_file=str(pki / "tasks-key.pem"),
        ca_file=str(pki / "ca.pem"),
    )


@pytest.fixture
async def start_tasks(
    tmp_path: Path, adapter_pki: Path, mesh_channel: Callable[..., grpc.aio.Channel]
) -> AsyncIterator[Callable[..., Any]]:
    """``await start(feed=None) -> Tasks``; every adapter is stopped after the test."""
    started: list[tuple[RunningServer, TaskDatabase]] = []

    async def start(feed: ChangeFeed | None = None) -> Tasks:
        db = await TaskDatabase.open(tmp_path / f"tasks-{len(started)}.db")
        adapter = TasksAdapter.build(db, clock_ns=ticking_clock(), feed=feed)
        server = await adapter.start(tasks_config(adapter_pki))
        started.append((server, db))
        return Tasks(adapter, server, mesh_channel(server.port, "tasks"))

    yield start
    for server, db in started:
        await server.stop(grace_s=0)
        await db.close()


@pytest.fixture
async def tasks(start_tasks: Callable[..., Any]) -> Tasks:
    started: Tasks = await start_tasks()
    return started


async def test_create_then_get(tasks: Tasks) -> None:
    alice = tasks.as_user("alice")
    created = await alice.create("  buy milk ")
    assert created.id.isdecimal()
    assert (created.title, created.done) == ("buy milk", False)
    assert created.created_at.ToJsonString() == "2023-11-14T22:13:20Z"
    assert created.updated_at == created.created_at
    assert not created.HasField("completed_at")
    assert await alice.get(created.id) == created


async def test_create_reads_only_the_title(tasks: Tasks) -> None:
    request = tasks_pb2.CreateTaskRequest(task=tasks_pb2.Task(id="99", title="t", done=True))
    response = await tasks.stub().CreateTask(request, metadata=(("x-dialog-user", "alice"),))
    assert (response.task.id != "99", response.task.done) == (True, False)


async def test_a_repeated_request_id_creates_one_task(tasks: Tasks, converse, make_message) -> None:
    alice = tasks.as_user("alice")
    first = await alice.create("once", request_id="req-1")
    again = await alice.create("once (retried)", request_id="req-1")
    bobs = await tasks.as_user("bob").create("bob's", request_id="req-1")
    assert again == first
    assert bobs.id != first.id

    # The key space is the one Converse uses for its message ids.
    msg = make_message("req-2", "task.create", "from chat", service="tasks")
    replies = (await converse(tasks.channel, "alice").ask(msg))["req-2"]
    typed = await alice.create("from typed", request_id="req-2")
    assert typed.id == replies[-1].content.data["id"]
    assert typed.title == "from chat"
    assert [t.title for t in (await alice.list()).tasks] == ["once", "from chat"]


async def test_list_pages_through_every_task_in_order(tasks: Tasks) -> None:
    alice = tasks.as_user("alice")
    created = [await alice.create(f"task {i}") for i in range(5)]
    await tasks.as_user("bob").create("not alice's")

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await alice.list(page_size=2, page_token=token)
        pages.append([t.id for t in page.tasks])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[t.id for t in created[0:2]], [t.id for t in created[2:4]], [created[4].id]]

    everything = await alice.list()  # page_size 0: the default size
    assert [t.id for t in everything.tasks] == [t.id for t in created]
    assert everything.next_page_token == ""
    capped = await alice.list(page_size=1_000_000)
    assert len(capped.tasks) == 5


async def test_a_page_token_survives_changes_before_it(tasks: Tasks) -> None:
    alice = tasks.as_user("alice")
    created = [await alice.create(f"task {i}") for i in range(3)]
    first = await alice.list(page_size=1)
    await alice.delete(created[0].id)
    rest = await alice.list(page_size=5, page_token=first.next_page_token)
    assert [t.id for t in rest.tasks] == [t.id for t in created[1:]]


async def test_update_changes_only_the_fields_in_the_mask(tasks: Tasks) -> None:
    alice = tasks.as_user("alice")
    created = await alice.create("buy milk")

    renamed = await alice.update(tasks_pb2.Task(id=created.id, title=" buy oat milk ", done=True),
                                 "title")
    assert (renamed.title, renamed.done) == ("buy oat milk", False)
    assert renamed.created_at == created.created_at
    assert renamed.updated_at.ToNanoseconds() > created.updated_at.ToNanoseconds()

    done = await alice.update(tasks_pb2.Task(id=created.id, done=True), "done", "updated_at")
    assert (done.title, done.done) == ("buy oat milk", True)
    assert done.completed_at == done.updated_at

    reopened = await alice.update(tasks_pb2.Task(id=created.id, title="ignored"), "done")
    assert (reopened.title, reopened.done) == ("buy oat milk", False)
    assert not reopened.HasField("completed_at")

    unchanged = await alice.update(tasks_pb2.Task(id=created.id, title="buy oat milk"), "title")
    assert unchanged == reopened  # nothing changed: updated_at stays
    assert await alice.get(created.id) == reopened


@pytest.mark.parametrize(
    ("paths", "details"),
    [
        (["priority"], "update_mask: unknown field 'priority' (updatable: done, title)"),
        (["*", "title"], "update_mask: '*' must be the only path"),
    ],
)
async def test_update_with_a_bad_mask_is_invalid(
    tasks: Tasks, paths: list[str], details: str
) -> None:
    alice = tasks.as_user("alice")
    created = await alice.create("buy milk")
    error = await refused(alice.update(tasks_pb2.Task(id=created.id, title="x"), *paths))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, details)
    assert await alice.get(created.id) == created


async def test_complete_marks_done_once(tasks: Tasks) -> None:
    alice = tasks.as_user("alice")
    created = await alice.create("buy milk")
    done = await alice.complete(created.id)
    assert done.done and done.HasField("completed_at")
    assert done.completed_at == done.updated_at
    assert await alice.complete(created.id) == done  # already done: nothing changes


async def test_delete_removes_the_task(tasks: Tasks) -> None:
    alice = tasks.as_user("alice")
    created = await alice.create("buy milk")
    assert await alice.delete(created.id) == empty_pb2.Empty()
    for call in (alice.get(created.id), alice.delete(created.id)):
        error = await refused(call)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.NOT_FOUND, f"task {created.id} not found"
        )
    assert list((await alice.list()).tasks) == []


async def test_another_users_task_is_not_found_like_a_missing_one(tasks: Tasks) -> None:
    alice, bob = tasks.as_user("alice"), tasks.as_user("bob")
    mine = await alice.create("private")
    missing_id = str(int(mine.id) + 1000)
    for task_id in (mine.id, missing_id):
        calls = [
            bob.get(task_id),
            bob.update(tasks_pb2.Task(id=task_id, title="mine now"), "title"),
            bob.complete(task_id),
            bob.delete(task_id),
        ]
        for call in calls:
            error = await refused(call)
            assert (error.code(), error.details()) == (
                grpc.StatusCode.NOT_FOUND, f"task {task_id} not found"
            )
    assert list((await bob.list()).tasks) == []
    assert await alice.get(mine.id) == mine


@pytest.mark.parametrize(
    ("call", "details"),
    [
        (lambda c: c.create("   "), "task title is required"),
        (lambda c: c.create("x" * 501), "task title is too long (at most 500 characters)"),
        (lambda c: c.create("t", request_id="r" * 129),
         "request_id is too long (at most 128 characters)"),
        (lambda c: c.list(page_size=-1), "page_size must not be negative"),
        (lambda c: c.list(page_token="not-a-token"),
         "page_token is not a token from a previous ListTasks response"),
        (lambda c: c.get(""), "task id is required"),
        (lambda c: c.get("seven"), "task id must be a positive integer"),
        (lambda c: c.complete("-1"), "task id must be a positive integer"),
        (lambda c: c.delete("1.5"), "task id must be a positive integer"),
        (lambda c: c.update(tasks_pb2.Task(title="x"), "title"), "task id is required"),
        (lambda c: c.update(tasks_pb2.Task(id="1", title=" "), "title"), "task title is required"),
    ],
)
async def test_bad_input_is_invalid_argument(
    tasks: Tasks, call: Callable[[Caller], Any], details: str
) -> None:
    error = await refused(call(tasks.as_user("alice")))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, details)


async def test_a_call_without_a_user_is_unauthenticated(tasks: Tasks) -> None:
    anonymous = tasks.as_user(None)
    for call in (anonymous.create("t"), anonymous.list()):
        error = await refused(call)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.UNAUTHENTICATED, "missing x-dialog-user metadata"
        )
    watch = anonymous.stub.Watch(tasks_pb2.WatchRequest())
    error = await refused(watch.read())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_watch_sees_typed_and_converse_changes(
    tasks: Tasks, converse, make_message
) -> None:
    alice, bob = tasks.as_user("alice"), tasks.as_user("bob")
    alice_watch, bob_watch = await alice.watch(), await bob.watch()

    typed = await alice.create("typed", request_id="r1")
    await alice.create("typed", request_id="r1")  # a repeat: no change
    chat = converse(tasks.channel, "alice")
    created = await chat.ask(make_message("m1", "task.create", "from chat", service="tasks"))
    chat_id = created["m1"][-1].content.data["id"]
    await alice.update(tasks_pb2.Task(id=typed.id, title="renamed"), "title")
    await alice.update(tasks_pb2.Task(id=typed.id, title="renamed"), "title")  # no change
    await alice.complete(typed.id)
    await chat.ask(make_message("m2", "task.complete", service="tasks", entity=chat_id))
    await alice.delete(typed.id)
    mine = await bob.create("bob's")

    seen = [await next_change(alice_watch) for _ in range(6)]
    assert [(change, task.id) for change, task in seen] == [
        (CREATED, typed.id),
        (CREATED, chat_id),
        (UPDATED, typed.id),
        (COMPLETED, typed.id),
        (COMPLETED, chat_id),
        (DELETED, typed.id),
    ]
    assert [task.title for _, task in seen] == [
        "typed", "from chat", "renamed", "renamed", "from chat", "renamed"
    ]
    assert seen[3][1].done and seen[4][1].done
    assert await next_change(bob_watch) == (CREATED, mine)  # none of alice's changes
    alice_watch.cancel()
    bob_watch.cancel()


async def test_a_cancelled_watch_ends_its_handler(tasks: Tasks) -> None:
    feed = tasks.adapter.feed
    alice = tasks.as_user("alice")
    watches = [await alice.watch() for _ in range(2)]
    assert feed.watchers("alice") == 2

    watches[0].cancel()
    await wait_until(lambda: feed.watchers("alice") == 1)
    task = await alice.create("still watched")
    assert await next_change(watches[1]) == (CREATED, task)

    watches[1].cancel()
    await wait_until(lambda: feed.watchers() == 0)
    await alice.create("nobody watches")
    assert feed.watchers() == 0


async def test_a_closed_channel_ends_its_watches(
    tasks: Tasks, adapter_pki: Path, mesh_channel: Callable[..., grpc.aio.Channel]
) -> None:
    channel = mesh_channel(tasks.server.port, "tasks")
    await Caller(tasks_pb2_grpc.TasksStub(channel), "alice").watch()
    assert tasks.adapter.feed.watchers("alice") == 1
    await channel.close()
    await wait_until(lambda: tasks.adapter.feed.watchers() == 0)


async def test_watches_per_user_are_bounded(start_tasks: Callable[..., Any]) -> None:
    tasks: Tasks = await start_tasks(ChangeFeed(watchers_per_user=1))
    first = await tasks.as_user("alice").watch()
    error = await refused(tasks.as_user("alice").stub.Watch(
        tasks_pb2.WatchRequest(), metadata=(("x-dialog-user", "alice"),)
    ).read())
    assert (error.code(), error.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "too many watches open for this user"
    )
    other = await tasks.as_user("bob").watch()  # the bound is per user
    first.cancel()
    other.cancel()


async def test_a_watcher_that_falls_behind_is_dropped() -> None:
    feed = ChangeFeed(queue_size=2)
    task = Task(id=1, title="t", done=False, created_at="2024-01-01T00:00:00.000Z")
    with feed.watch("alice") as slow, feed.watch("alice") as fast:
        for _ in range(2):
            feed.publish(TaskChanged("alice", CREATED, task))
            assert (await fast.next()).task == task
        feed.publish(TaskChanged("alice", UPDATED, task))
        assert feed.watchers("alice") == 1  # the slow one is out of the feed
        with pytest.raises(FellBehind):
            await slow.next()
        assert (await fast.next()).change == UPDATED
    assert feed.watchers() == 0


async def test_health_and_reflection_list_the_typed_service(tasks: Tasks) -> None:
    health = health_pb2_grpc.HealthStub(tasks.channel)
    for service in ("", "dialog.backend.v1.Backend", TASKS_SERVICE):
        status = await health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING, service

    reflection = reflection_pb2_grpc.ServerReflectionStub(tasks.channel)
    call = reflection.ServerReflectionInfo(timeout=CALL_TIMEOUT_S)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.write(
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=TASKS_SERVICE)
    )
    await call.done_writing()
    listed, described = [response async for response in call]
    names = {s.name for s in listed.list_services_response.service}
    assert {TASKS_SERVICE, "dialog.backend.v1.Backend"} <= names
    files = described.file_descriptor_response.file_descriptor_proto
    assert files, described.error_response.error_message


FIRST_SCHEMA = """
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    request_id TEXT,
    UNIQUE (owner, request_id)
);
INSERT INTO tasks (owner, title, done, created_at)
    VALUES ('alice', 'old', 0, '2024-01-01T00:00:00.000Z');
"""


async def test_a_database_from_before_the_typed_service_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    with sqlite3.connect(path) as old:
        old.executescript(FIRST_SCHEMA)
    old.close()
    db = await TaskDatabase.open(path)
    try:
        [task] = await db.list("alice")
        assert (task.title, task.updated_at, task.completed_at) == ("old", "", "")
        done, changed = await db.complete("alice", task.id) or (task, False)
        assert changed and done.done
        assert done.completed_at == done.updated_at != ""
    finally:
        await db.close()
    reopened = await TaskDatabase.open(path)  # the columns exist now: nothing to add
    try:
        assert (await reopened.get("alice", task.id)) == done
    finally:
        await reopened.close()
