"""The rules of the typed ``dialog.tasks.v1.Tasks`` service (pure, no I/O).

Reading requests (ids, titles, request ids, page sizes and tokens, update
masks), applying an update to a task, and the protobuf form of a task. A
request that cannot be carried out raises ``InvalidArgument`` or
``TaskNotFound``, whose text is safe to show; the servicer turns them into
gRPC statuses in one place.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from adapters.tasks.commands import Rejected, Task, check_title, parse_task_id
from dialog.tasks.v1 import tasks_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_REQUEST_ID_CHARS = 128

TITLE = "title"
DONE = "done"
WILDCARD = "*"
UPDATABLE = frozenset({TITLE, DONE})
# Accepted in a mask and ignored (AIP-161: a mask valid for reading is valid for writing).
OUTPUT_ONLY = frozenset({"id", "created_at", "updated_at", "completed_at"})

_TOKEN_PREFIX = "t1:"
_TOKEN_BODY = re.compile(r"t1:([0-9]{1,19})")


class Refused(Exception):
    """A request the service refuses; the text is safe to show to the caller."""


class InvalidArgument(Refused):
    """The request itself is malformed (INVALID_ARGUMENT)."""


class TaskNotFound(Refused):
    """No task of the caller has this id (NOT_FOUND), whoever else may own one."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} not found")


def read_task_id(raw: str) -> int:
    """The task id of a request's ``id`` field."""
    if not raw.strip():
        raise InvalidArgument("task id is required")
    task_id = parse_task_id(raw)
    if task_id is None:
        raise InvalidArgument("task id must be a positive integer")
    return task_id


def read_title(raw: str) -> str:
    """A valid title, without its surrounding spaces."""
    checked = check_title(raw)
    if isinstance(checked, Rejected):
        raise InvalidArgument(checked.text)
    return checked


def read_request_id(raw: str) -> str | None:
    """The idempotency key of a create, or None when the caller gave none."""
    if len(raw) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(f"request_id is too long (at most {MAX_REQUEST_ID_CHARS} characters)")
    return raw or None


def read_page_size(raw: int) -> int:
    """Tasks per page: 0 means the default, and sizes above the maximum are capped."""
    if raw < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(raw or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(after_id: int) -> str:
    """The opaque token of the page that starts after task ``after_id``."""
    raw = f"{_TOKEN_PREFIX}{after_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(token: str) -> int:
    """The task id a page starts after: 0 for an empty token (the first page).

    Only tokens made by ``encode_page_token`` are accepted.
    """
    if not token:
        return 0
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        match = _TOKEN_BODY.fullmatch(raw.decode("ascii"))
    except (binascii.Error, ValueError):
        match = None
    if match is None or encode_page_token(int(match[1])) != token:
        raise InvalidArgument("page_token is not a token from a previous ListTasks response")
    return int(match[1])


def split_page(rows: Sequence[Task], page_size: int) -> tuple[list[Task], str]:
    """One page from up to ``page_size + 1`` rows in id order, and the next page's token.

    The extra row only says that another page exists; the token is empty on the last page.
    """
    page = list(rows[:page_size])
    more = len(rows) > page_size and bool(page)
    return page, encode_page_token(page[-1].id) if more else ""


@dataclass(frozen=True)
class TaskUpdate:
    """The new values of the fields an update changes (None: left as it is)."""

    title: str | None = None
    done: bool | None = None


def read_update(task: tasks_pb2.Task, mask_paths: Sequence[str]) -> TaskUpdate:
    """What an UpdateTask request changes (AIP-134).

    An empty mask names every updatable field set to a non-default value; ``*``
    names every updatable field. Output-only fields are ignored; any other path
    is refused.
    """
    paths = set(mask_paths)
    if WILDCARD in paths and len(paths) > 1:
        raise InvalidArgument("update_mask: '*' must be the only path")
    unknown = sorted(paths - UPDATABLE - OUTPUT_ONLY - {WILDCARD})
    if unknown:
        names = ", ".join(repr(p) for p in unknown)
        noun = "field" if len(unknown) == 1 else "fields"
        raise InvalidArgument(f"update_mask: unknown {noun} {names} (updatable: done, title)")
    if WILDCARD in paths:
        paths = set(UPDATABLE)
    elif not paths:
        paths = {name for name, value in ((TITLE, task.title), (DONE, task.done)) if value}
    return TaskUpdate(
        title=read_title(task.title) if TITLE in paths else None,
        done=task.done if DONE in paths else None,
    )


def apply_update(task: Task, update: TaskUpdate, changed_at: str) -> Task:
    """``task`` with the update applied; the same task when nothing changes.

    A change moves ``updated_at`` to ``changed_at``; marking the task done sets
    ``completed_at``, and reopening it clears it.
    """
    title = task.title if update.title is None else update.title
    done = task.done if update.done is None else update.done
    if (title, done) == (task.title, task.done):
        return task
    completed_at = task.completed_at if done == task.done else (changed_at if done else "")
    return replace(task, title=title, done=done, updated_at=changed_at, completed_at=completed_at)


def change_of_update(before: Task, after: Task) -> tasks_pb2.ChangeType | None:
    """What a watcher is told about an update: None when nothing changed."""
    if after == before:
        return None
    if after.done and not before.done:
        return tasks_pb2.CHANGE_TYPE_COMPLETED
    return tasks_pb2.CHANGE_TYPE_UPDATED


def task_message(task: Task) -> tasks_pb2.Task:
    """The protobuf form of a task."""
    out = tasks_pb2.Task(id=str(task.id), title=task.title, done=task.done)
    out.created_at.FromJsonString(task.created_at)
    out.updated_at.FromJsonString(task.updated_at or task.created_at)
    if task.completed_at:
        out.completed_at.FromJsonString(task.completed_at)
    return out
