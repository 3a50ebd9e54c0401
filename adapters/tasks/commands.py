"""Task commands: parsing requests and composing replies (pure, no I/O).

A request's ``content.type`` names the command:

- ``task.create``: the title is ``content.text``, else ``content.data.title``;
- ``task.list``;
- ``task.complete``: the id is ``content.data.id``, else ``context.entity``.

Task ids travel as strings (``"7"``) because a JSON number in a protobuf
Struct is a double; ids given as integral numbers are accepted too.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from adapters.envelope import Message, error_reply, event, reply

CREATE = "task.create"
LIST = "task.list"
COMPLETE = "task.complete"
CREATED = "task.created"
COMPLETED = "task.completed"
TASK = "task"
MAX_TITLE_CHARS = 500
MAX_TASK_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdecimal() accepts "٣"


@dataclass(frozen=True)
class Task:
    """One stored task. Times are ISO 8601 in UTC (``iso_utc``).

    ``updated_at`` empty means "never changed since ``created_at``";
    ``completed_at`` is empty while the task is not done.
    """

    id: int
    title: str
    done: bool
    created_at: str
    updated_at: str = ""
    completed_at: str = ""


@dataclass(frozen=True)
class CreateTask:
    title: str


@dataclass(frozen=True)
class ListTasks:
    pass


@dataclass(frozen=True)
class CompleteTask:
    task_id: int


@dataclass(frozen=True)
class Rejected:
    """The request is not a valid command; ``text`` is safe to show."""

    text: str


Command = CreateTask | ListTasks | CompleteTask


def parse_command(msg: Message) -> Command | Rejected:
    """The command a request asks for, or why it cannot be carried out."""
    kind = msg.content.type
    if kind == CREATE:
        return _parse_create(msg)
    if kind == LIST:
        return ListTasks()
    if kind == COMPLETE:
        return _parse_complete(msg)
    return Rejected(f"unknown task command {kind!r}")


def _parse_create(msg: Message) -> CreateTask | Rejected:
    title: Any = msg.content.text.strip()
    if not title and "title" in msg.content.data.fields:
        title = msg.content.data["title"]
        if not isinstance(title, str):
            return Rejected("task title must be a string")
    checked = check_title(title)
    return checked if isinstance(checked, Rejected) else CreateTask(checked)


def check_title(title: str) -> str | Rejected:
    """A title without its surrounding spaces, or why it cannot be a task's title."""
    title = title.strip()
    if not title:
        return Rejected("task title is required")
    if len(title) > MAX_TITLE_CHARS:
        return Rejected(f"task title is too long (at most {MAX_TITLE_CHARS} characters)")
    return title


def _parse_complete(msg: Message) -> CompleteTask | Rejected:
    raw: Any = msg.context.entity
    if "id" in msg.content.data.fields:
        raw = msg.content.data["id"]
    if raw == "":
        return Rejected("task id is required")
    task_id = parse_task_id(raw)
    if task_id is None:
        return Rejected("task id must be a positive integer")
    return CompleteTask(task_id)


def parse_task_id(raw: object) -> int | None:
    """A task id from a string of digits or an integral number, else None."""
    value: int | None = None
    if isinstance(raw, str) and _DIGITS.fullmatch(raw.strip()):
        value = int(raw.strip())
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    if value is None or not 0 < value <= MAX_TASK_ID:
        return None
    return value


def iso_utc(now_ns: int) -> str:
    """A clock reading in nanoseconds as ISO 8601 UTC, to the millisecond."""
    moment = dt.datetime.fromtimestamp(now_ns / 1e9, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_data(task: Task) -> dict[str, Any]:
    """The JSON form of a task."""
    return {"id": str(task.id), "title": task.title, "done": task.done,
            "created_at": task.created_at}


def not_found(task_id: int) -> Message:
    """The reply for a task that does not exist or belongs to someone else."""
    return error_reply(f"task {task_id} not found")


def task_replies(task: Task, *, changed: bool, event_type: str) -> list[Message]:
    """An event if the task changed (not on a repeated request), then the final ``task``."""
    data = task_data(task)
    out = [event(event_type, data)] if changed else []
    out.append(reply(TASK, data=data))
    for msg in out:
        msg.context.entity = data["id"]
    return out


def list_reply(tasks: list[Task]) -> Message:
    """The final ``task.list`` reply."""
    return reply(LIST, data={"tasks": [task_data(t) for t in tasks]})
