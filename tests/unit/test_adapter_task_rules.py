"""The typed Tasks service's rules: ids, titles, paging, update masks (no I/O, no event loop)."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.tasks.commands import MAX_TASK_ID, Task
from adapters.tasks.rules import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_REQUEST_ID_CHARS,
    InvalidArgument,
    TaskNotFound,
    TaskUpdate,
    apply_update,
    change_of_update,
    decode_page_token,
    encode_page_token,
    read_page_size,
    read_request_id,
    read_task_id,
    read_title,
    read_update,
    split_page,
    task_message,
)
from dialog.tasks.v1 import tasks_pb2
from tests.unit.test_pure_core import environment_reads, forbidden_imports

ROOT = Path(__file__).resolve().parents[2]
T0 = "2024-01-01T00:00:00.000Z"
T1 = "2024-01-01T00:00:01.000Z"
OPEN = Task(id=7, title="buy milk", done=False, created_at=T0, updated_at=T0)


def test_rules_module_is_pure() -> None:
    tree = ast.parse((ROOT / "adapters" / "tasks" / "rules.py").read_text())
    assert forbidden_imports("adapters.tasks.rules", tree) == set()
    assert environment_reads(tree) == []


@pytest.mark.parametrize(
    ("raw", "expected"), [("7", 7), (" 12 ", 12), (str(MAX_TASK_ID), MAX_TASK_ID)]
)
def test_task_ids_are_positive_decimal_integers(raw: str, expected: int) -> None:
    assert read_task_id(raw) == expected


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("", "task id is required"),
        ("  ", "task id is required"),
        ("abc", "task id must be a positive integer"),
        ("0", "task id must be a positive integer"),
        ("-3", "task id must be a positive integer"),
        ("1.5", "task id must be a positive integer"),
        (str(MAX_TASK_ID + 1), "task id must be a positive integer"),
        ("٣", "task id must be a positive integer"),
    ],
)
def test_bad_task_ids_are_invalid_arguments(raw: str, error: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{error}$"):
        read_task_id(raw)


def test_not_found_names_the_id_only() -> None:
    assert str(TaskNotFound(42)) == "task 42 not found"


def test_titles_are_trimmed_and_bounded() -> None:
    assert read_title("  call mum ") == "call mum"
    assert read_title("x" * 500) == "x" * 500
    with pytest.raises(InvalidArgument, match=r"^task title is required$"):
        read_title("   ")
    with pytest.raises(InvalidArgument, match="too long"):
        read_title("x" * 501)


def test_request_ids_are_optional_and_bounded() -> None:
    assert read_request_id("") is None
    assert read_request_id("r" * MAX_REQUEST_ID_CHARS) == "r" * MAX_REQUEST_ID_CHARS
    with pytest.raises(InvalidArgument, match="request_id is too long"):
        read_request_id("r" * (MAX_REQUEST_ID_CHARS + 1))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, DEFAULT_PAGE_SIZE),
        (1, 1),
        (MAX_PAGE_SIZE, MAX_PAGE_SIZE),
        (MAX_PAGE_SIZE + 1, MAX_PAGE_SIZE),
        (2**31 - 1, MAX_PAGE_SIZE),
    ],
)
def test_page_size_defaults_and_caps(raw: int, expected: int) -> None:
    assert read_page_size(raw) == expected


def test_negative_page_size_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"^page_size must not be negative$"):
        read_page_size(-1)


@given(st.integers(min_value=0, max_value=MAX_TASK_ID))
def test_page_tokens_round_trip(after_id: int) -> None:
    token = encode_page_token(after_id)
    assert token.isascii() and "=" not in token and token != str(after_id)
    assert decode_page_token(token) == after_id


def test_empty_token_is_the_first_page() -> None:
    assert decode_page_token("") == 0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "dDE6Nw==",  # the token of 7, with padding: not the canonical form
        encode_page_token(7) + "A",
        " " + encode_page_token(7),
        _b64(b"t1:007"),
        _b64(b"t1:-7"),
        _b64(b"t1:"),
        _b64(b"t2:7"),
        _b64(b"t1:" + b"9" * 20),
        _b64(b"\xff\xfe"),
        "é",
    ],
)
def test_malformed_page_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^page_token is not a token from a previous"):
        decode_page_token(token)


def _tasks(*ids: int) -> list[Task]:
    return [Task(id=i, title=f"t{i}", done=False, created_at=T0) for i in ids]


@pytest.mark.parametrize(
    ("rows", "size", "page_ids", "next_after"),
    [
        (_tasks(), 2, [], None),
        (_tasks(1), 2, [1], None),
        (_tasks(1, 2), 2, [1, 2], None),
        (_tasks(1, 2, 5), 2, [1, 2], 2),
        (_tasks(4, 9), 1, [4], 4),
    ],
)
def test_split_page(
    rows: list[Task], size: int, page_ids: list[int], next_after: int | None
) -> None:
    page, token = split_page(rows, size)
    assert [t.id for t in page] == page_ids
    assert token == ("" if next_after is None else encode_page_token(next_after))


def _proto(title: str = "", done: bool = False) -> tasks_pb2.Task:
    return tasks_pb2.Task(id="7", title=title, done=done)


@pytest.mark.parametrize(
    ("task", "paths", "expected"),
    [
        (_proto("new", True), ["title"], TaskUpdate(title="new")),
        (_proto("new", True), ["done"], TaskUpdate(done=True)),
        (_proto("", False), ["done"], TaskUpdate(done=False)),
        (_proto(" new ", False), ["title", "done"], TaskUpdate(title="new", done=False)),
        (_proto("new", False), ["*"], TaskUpdate(title="new", done=False)),
        (_proto("new", False), [], TaskUpdate(title="new")),
        (_proto("", True), [], TaskUpdate(done=True)),
        (_proto("", False), [], TaskUpdate()),
        (_proto("new"), ["title", "id", "created_at", "updated_at", "completed_at"],
         TaskUpdate(title="new")),
        (_proto("new"), ["title", "title"], TaskUpdate(title="new")),
    ],
)
def test_update_masks(task: tasks_pb2.Task, paths: list[str], expected: TaskUpdate) -> None:
    assert read_update(task, paths) == expected


@pytest.mark.parametrize(
    ("paths", "error"),
    [
        (["priority"], "update_mask: unknown field 'priority' (updatable: done, title)"),
        (["title", "owner", "a.b"], "update_mask: unknown fields 'a.b', 'owner' (updatable"),
        (["Title"], "update_mask: unknown field 'Title'"),
        (["*", "title"], "update_mask: '*' must be the only path"),
        (["title"], "task title is required"),
    ],
)
def test_bad_update_masks_are_refused(paths: list[str], error: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        read_update(_proto("", True), paths)
    assert str(info.value).startswith(error)


@pytest.mark.parametrize(
    ("before", "update", "after"),
    [
        (OPEN, TaskUpdate(), OPEN),
        (OPEN, TaskUpdate(title="buy milk", done=False), OPEN),
        (OPEN, TaskUpdate(title="buy oat milk"),
         Task(7, "buy oat milk", False, T0, updated_at=T1)),
        (OPEN, TaskUpdate(done=True),
         Task(7, "buy milk", True, T0, updated_at=T1, completed_at=T1)),
        (Task(7, "buy milk", True, T0, updated_at=T0, completed_at=T0), TaskUpdate(done=False),
         Task(7, "buy milk", False, T0, updated_at=T1)),
        (Task(7, "buy milk", True, T0, updated_at=T0, completed_at=T0), TaskUpdate(title="x"),
         Task(7, "x", True, T0, updated_at=T1, completed_at=T0)),
    ],
)
def test_apply_update(before: Task, update: TaskUpdate, after: Task) -> None:
    assert apply_update(before, update, T1) == after


def test_what_watchers_are_told_about_an_update() -> None:
    done = apply_update(OPEN, TaskUpdate(done=True), T1)
    renamed = apply_update(OPEN, TaskUpdate(title="x"), T1)
    assert change_of_update(OPEN, OPEN) is None
    assert change_of_update(OPEN, done) == tasks_pb2.CHANGE_TYPE_COMPLETED
    assert change_of_update(OPEN, renamed) == tasks_pb2.CHANGE_TYPE_UPDATED
    assert change_of_update(done, apply_update(done, TaskUpdate(done=False), T1)) == (
        tasks_pb2.CHANGE_TYPE_UPDATED
    )


def test_task_message_carries_timestamps() -> None:
    done = Task(7, "t", True, "2024-01-01T00:00:00.250Z", updated_at=T1, completed_at=T1)
    message = task_message(done)
    assert (message.id, message.title, message.done) == ("7", "t", True)
    assert message.created_at.ToJsonString() == "2024-01-01T00:00:00.250Z"
    assert message.updated_at.ToJsonString() == "2024-01-01T00:00:01Z"
    assert message.completed_at.ToJsonString() == "2024-01-01T00:00:01Z"


def test_task_message_of_an_open_task_has_no_completion_time() -> None:
    legacy = Task(7, "t", False, T0)  # stored before updated_at existed
    message = task_message(legacy)
    assert not message.HasField("completed_at")
    assert message.updated_at == message.created_at
