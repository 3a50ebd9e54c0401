"""Task commands: parsing and reply composition, without a database."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.tasks.commands import (
    CompleteTask,
    CreateTask,
    ListTasks,
    Rejected,
    Task,
    iso_utc,
    list_reply,
    not_found,
    parse_command,
    parse_task_id,
    task_data,
    task_replies,
)
from dialog.v1 import message_pb2


def request(
    kind: str, text: str = "", data: dict[str, Any] | None = None, entity: str = ""
) -> message_pb2.Message:
    msg = message_pb2.Message(id="r1")
    msg.content.type = kind
    msg.content.text = text
    if data is not None:
        msg.content.data.update(data)
    msg.context.entity = entity
    return msg


BAD_ID = "task id must be a positive integer"


@pytest.mark.parametrize(
    ("msg", "command"),
    [
        (request("task.create", "  buy milk "), CreateTask("buy milk")),
        (request("task.create", data={"title": "call"}), CreateTask("call")),
        (request("task.create", "text wins", data={"title": "data"}), CreateTask("text wins")),
        (request("task.create"), Rejected("task title is required")),
        (request("task.create", data={"title": None}), Rejected("task title must be a string")),
        (
            request("task.create", "x" * 501),
            Rejected("task title is too long (at most 500 characters)"),
        ),
        (request("task.create", "x" * 500), CreateTask("x" * 500)),
        (request("task.list"), ListTasks()),
        (request("task.complete", data={"id": "7"}), CompleteTask(7)),
        (request("task.complete", data={"id": 7}), CompleteTask(7)),
        (request("task.complete", entity="12"), CompleteTask(12)),
        (request("task.complete", data={"id": "3"}, entity="12"), CompleteTask(3)),
        (request("task.complete"), Rejected("task id is required")),
        (request("task.complete", data={"id": 1.5}), Rejected(BAD_ID)),
        (request("task.complete", entity="0"), Rejected(BAD_ID)),
        (request("task.delete"), Rejected("unknown task command 'task.delete'")),
        (request(""), Rejected("unknown task command ''")),
    ],
)
def test_parse_command(msg: message_pb2.Message, command: object) -> None:
    assert parse_command(msg) == command


@pytest.mark.parametrize(
    ("raw", "task_id"),
    [
        ("7", 7),
        (" 42 ", 42),
        (7.0, 7),
        (9, 9),
        ("0", None),
        ("-3", None),
        ("7a", None),
        ("", None),
        (True, None),
        (None, None),
        (2.0**64, None),
        ("٣", None),
        ("9" * 25, None),
        (str(2**63 - 1), 2**63 - 1),
        (str(2**63), None),
    ],
)
def test_parse_task_id(raw: object, task_id: int | None) -> None:
    assert parse_task_id(raw) == task_id


def test_iso_utc() -> None:
    assert iso_utc(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123Z"


TASK = Task(id=7, title="t", done=True, created_at="2023-11-14T22:13:20.123Z")


def test_task_data_uses_string_ids() -> None:
    assert task_data(TASK) == {
        "id": "7",
        "title": "t",
        "done": True,
        "created_at": "2023-11-14T22:13:20.123Z",
    }


def test_task_replies_send_an_event_only_on_change() -> None:
    changed = task_replies(TASK, changed=True, event_type="task.completed")
    assert [(m.role, m.content.type) for m in changed] == [
        (message_pb2.ROLE_EVENT, "task.completed"),
        (message_pb2.ROLE_ASSISTANT, "task"),
    ]
    assert all(m.context.entity == "7" for m in changed)
    same = task_replies(TASK, changed=False, event_type="task.completed")
    assert [m.content.type for m in same] == ["task"]


def test_list_and_not_found_replies() -> None:
    listed = list_reply([TASK])
    assert listed.content.type == "task.list"
    assert [dict(t) for t in listed.content.data["tasks"]] == [task_data(TASK)]
    missing = not_found(7)
    assert (missing.content.type, missing.content.text) == ("error", "task 7 not found")
