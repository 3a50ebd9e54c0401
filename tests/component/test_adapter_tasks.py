"""The tasks adapter over real gRPC with mutual TLS, on a real SQLite file."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.tasks.server import TasksServicer
from adapters.tasks.store import TaskDatabase
from dialog.v1 import message_pb2

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "tasks.db"


@pytest.fixture
async def db(db_path: Path) -> AsyncIterator[TaskDatabase]:
    database = await TaskDatabase.open(db_path)
    yield database
    await database.close()


@pytest.fixture
async def tasks(adapter_runner, mesh_channel, db):
    server = await adapter_runner(TasksServicer(db), "tasks")
    return mesh_channel(server.port, "tasks")


def task_message(make_message, msg_id: str, kind: str, text: str = "", **kw):
    return make_message(msg_id, kind, text, service="tasks", **kw)


async def test_create_sends_an_event_then_the_task(tasks, converse, make_message, final_of) -> None:
    replies = (
        await converse(tasks, "alice").ask(
            task_message(make_message, "c1", "task.create", "buy milk")
        )
    )["c1"]

    assert [(m.role, m.content.type) for m in replies] == [
        (message_pb2.ROLE_EVENT, "task.created"),
        (message_pb2.ROLE_ASSISTANT, "task"),
    ]
    event, final = replies
    task = dict(final.content.data)
    assert dict(event.content.data) == task
    assert set(task) == {"id", "title", "done", "created_at"}
    assert (task["title"], task["done"]) == ("buy milk", False)
    assert task["id"].isdecimal()
    assert ISO_UTC.fullmatch(task["created_at"])
    assert final_of(replies).context.entity == task["id"]
    assert all(m.context.reply_to == "c1" for m in replies)


async def test_create_takes_the_title_from_data(tasks, converse, make_message) -> None:
    msg = task_message(make_message, "c1", "task.create", data={"title": "  call mum "})
    final = (await converse(tasks, "alice").ask(msg))["c1"][-1]
    assert final.content.data["title"] == "call mum"


async def test_list_returns_the_callers_tasks_in_order(tasks, converse, make_message) -> None:
    session = converse(tasks, "alice")
    for i, title in enumerate(["one", "two", "three"]):
        await session.ask(task_message(make_message, f"c{i}", "task.create", title))
    final = (await session.ask(task_message(make_message, "l1", "task.list")))["l1"]
    assert [m.content.type for m in final] == ["task.list"]
    listed = [dict(t) for t in final[0].content.data["tasks"]]
    assert [t["title"] for t in listed] == ["one", "two", "three"]
    assert [int(t["id"]) for t in listed] == sorted(int(t["id"]) for t in listed)


async def test_complete_by_data_id_and_by_entity(tasks, converse, make_message) -> None:
    session = converse(tasks, "alice")
    ids = []
    for i in range(2):
        created = await session.ask(task_message(make_message, f"c{i}", "task.create", "t"))
        ids.append(created[f"c{i}"][-1].content.data["id"])

    by_data = (
        await session.ask(task_message(make_message, "k1", "task.complete", data={"id": ids[0]}))
    )["k1"]
    by_number = (
        await session.ask(
            task_message(make_message, "k2", "task.complete", data={"id": int(ids[1])})
        )
    )["k2"]
    for replies in (by_data, by_number):
        assert [m.content.type for m in replies] == ["task.completed", "task"]
        assert replies[-1].content.data["done"] is True

    again = (await session.ask(task_message(make_message, "k3", "task.complete", entity=ids[0])))[
        "k3"
    ]
    assert [m.content.type for m in again] == ["task"]  # already done: no second event
    assert again[-1].content.data["id"] == ids[0]


async def test_users_never_see_each_others_tasks(tasks, converse, make_message) -> None:
    alice, bob = converse(tasks, "alice"), converse(tasks, "bob")
    created = await alice.ask(task_message(make_message, "c1", "task.create", "private"))
    alice_id = created["c1"][-1].content.data["id"]

    bob_list = (await bob.ask(task_message(make_message, "l1", "task.list")))["l1"][-1]
    assert list(bob_list.content.data["tasks"]) == []

    theirs = (await bob.ask(task_message(make_message, "k1", "task.complete", entity=alice_id)))[
        "k1"
    ]
    unknown_id = str(int(alice_id) + 1000)
    missing = (await bob.ask(task_message(make_message, "k2", "task.complete", entity=unknown_id)))[
        "k2"
    ]
    assert [(m.content.type, m.content.text) for m in theirs] == [
        ("error", f"task {alice_id} not found")
    ]
    assert [(m.content.type, m.content.text) for m in missing] == [
        ("error", f"task {unknown_id} not found")
    ]
    still = (await alice.ask(task_message(make_message, "l2", "task.list")))["l2"][-1]
    assert [t["done"] for t in still.content.data["tasks"]] == [False]


@pytest.mark.parametrize(
    ("kind", "text", "data", "entity", "error"),
    [
        ("task.rename", "", None, "", "unknown task command 'task.rename'"),
        ("task.create", "  ", None, "", "task title is required"),
        ("task.create", "", {"title": 3}, "", "task title must be a string"),
        ("task.complete", "", None, "", "task id is required"),
        ("task.complete", "", {"id": "seven"}, "", "task id must be a positive integer"),
        ("task.complete", "", None, "-1", "task id must be a positive integer"),
    ],
)
async def test_invalid_commands_get_a_clear_error(
    kind, text, data, entity, error, tasks, converse, make_message, final_of
) -> None:
    msg = task_message(make_message, "x1", kind, text, data=data, entity=entity)
    replies = (await converse(tasks, "alice").ask(msg))["x1"]
    assert len(replies) == 1
    assert (final_of(replies).content.type, replies[0].content.text) == ("error", error)


async def test_repeated_create_adds_one_task(tasks, converse, make_message) -> None:
    session = converse(tasks, "alice")
    first = (await session.ask(task_message(make_message, "c1", "task.create", "once")))["c1"]
    again = (await session.ask(task_message(make_message, "c1", "task.create", "once")))["c1"]
    assert again == [first[-1]]
    listed = (await session.ask(task_message(make_message, "l1", "task.list")))["l1"][-1]
    assert len(listed.content.data["tasks"]) == 1


async def test_repeated_create_after_a_restart_adds_one_task(
    adapter_runner, mesh_channel, converse, make_message, db_path: Path
) -> None:
    msg = task_message(make_message, "c1", "task.create", "survives restarts")
    first_db = await TaskDatabase.open(db_path)
    first = await adapter_runner(TasksServicer(first_db), "tasks")
    before = (await converse(mesh_channel(first.port, "tasks"), "alice").ask(msg))["c1"]
    await first.stop(grace_s=0)
    await first_db.close()

    second_db = await TaskDatabase.open(db_path)
    try:
        second = await adapter_runner(TasksServicer(second_db), "tasks")
        session = converse(mesh_channel(second.port, "tasks"), "alice")
        after = (await session.ask(msg))["c1"]
        listed = (await session.ask(task_message(make_message, "l1", "task.list")))["l1"][-1]
    finally:
        await second_db.close()
    assert [m.content.type for m in after] == ["task"]  # no second "task.created"
    assert after[-1].content.data == before[-1].content.data
    assert len(listed.content.data["tasks"]) == 1


async def test_database_uses_wal_in_a_created_directory(db, db_path: Path) -> None:
    assert db_path.parent.is_dir()
    assert await db.journal_mode() == "wal"
