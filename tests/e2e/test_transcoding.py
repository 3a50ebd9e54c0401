"""``dialog.tasks.v1.Tasks`` over plain HTTP/JSON, transcoded by a real gateway process from
the descriptors it learned from the real tasks back-end's reflection: every method through
its ``google.api.http`` mapping and through its RPC path, ``Watch`` as server-sent events and
as JSON lines, the error shape, and ``/openapi.json``."""

from __future__ import annotations

import json
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.stack import ROOT, Stack, running_stack, wait_until

RPC = "/dialog.tasks.v1.Tasks"
LEARN_TIMEOUT_S = 20


def client(stack: Stack, user: str | None = "") -> httpx.Client:
    """A client of the gateway's HTTPS port, with a token for ``user`` (a fresh one when
    empty; none when None)."""
    headers = {} if user is None else {"Authorization": f"Bearer {stack.token(user)}"}
    return httpx.Client(
        base_url=stack.base_url, verify=stack.ssl_context(), headers=headers, timeout=10
    )


def openapi(stack: Stack) -> dict[str, Any]:
    with client(stack) as c:
        answer = c.get("/openapi.json")
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


@pytest.fixture(scope="module")
def tasks(stack: Stack) -> Stack:
    """The session's stack, once the gateway has learned ``Tasks`` from reflection."""
    wait_until(lambda: "/v1/tasks" in openapi(stack)["paths"], LEARN_TIMEOUT_S, "Tasks routes")
    return stack


@pytest.fixture
def alice(tasks: Stack) -> Iterator[httpx.Client]:
    with client(tasks, f"alice-{secrets.token_hex(4)}") as c:
        yield c


def create(c: httpx.Client, title: str) -> dict[str, Any]:
    answer = c.post("/v1/tasks", json={"title": title})
    assert answer.status_code == 200, answer.text
    task: dict[str, Any] = answer.json()["task"]
    return task


def assert_error(answer: httpx.Response, status: int, code: str) -> str:
    """The answer is the one error shape with ``status`` and ``code``; its message."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == code
    assert error["details"] == []
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


def test_every_method_over_its_rest_mapping(alice: httpx.Client) -> None:
    created = create(alice, "buy milk")
    assert created["title"] == "buy milk" and "done" not in created  # defaults are left out
    assert {"id", "created_at", "updated_at"} <= set(created)
    path = f"/v1/tasks/{created['id']}"

    assert alice.get(path).json() == {"task": created}

    changed = alice.patch(path, params={"update_mask": "title"}, json={"title": "oat milk"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["task"]["title"] == "oat milk"

    done = alice.post(f"{path}:complete", json={})
    assert done.status_code == 200, done.text
    assert done.json()["task"]["done"] is True and "completed_at" in done.json()["task"]

    deleted = alice.delete(path)
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert_error(alice.get(path), 404, "not_found")


def test_create_takes_its_request_id_as_a_query_parameter(alice: httpx.Client) -> None:
    key = secrets.token_hex(8)
    first = alice.post("/v1/tasks", params={"request_id": key}, json={"title": "once"})
    again = alice.post("/v1/tasks", params={"request_id": key}, json={"title": "once"})
    assert first.status_code == again.status_code == 200
    assert first.json()["task"]["id"] == again.json()["task"]["id"]


def test_list_pages_with_page_size_and_page_token(alice: httpx.Client) -> None:
    ids = [create(alice, f"task {i}")["id"] for i in range(3)]
    seen: list[str] = []
    params: dict[str, Any] = {"page_size": 2}
    while True:
        page = alice.get("/v1/tasks", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [t["id"] for t in body["tasks"]]
        if not body.get("next_page_token"):
            break
        params = {"pageSize": 2, "pageToken": body["next_page_token"]}  # lowerCamel too
    assert seen == ids


def test_every_method_over_its_rpc_path(alice: httpx.Client) -> None:
    created = alice.post(f"{RPC}/CreateTask", json={"task": {"title": "rpc"}})
    assert created.status_code == 200, created.text
    task_id = created.json()["task"]["id"]
    got = alice.post(f"{RPC}/GetTask", json={"id": task_id})
    assert got.json()["task"]["title"] == "rpc"
    listed = alice.post(f"{RPC}/ListTasks", json={"pageSize": 10})
    assert [t["id"] for t in listed.json()["tasks"]] == [task_id]
    changed = alice.post(
        f"{RPC}/UpdateTask",
        json={"task": {"id": task_id, "title": "rpc 2"}, "update_mask": "title"},
    )
    assert changed.json()["task"]["title"] == "rpc 2"
    done = alice.post(f"{RPC}/CompleteTask", json={"id": task_id})
    assert done.json()["task"]["done"] is True
    deleted = alice.post(f"{RPC}/DeleteTask", json={"id": task_id})
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert_error(alice.post(f"{RPC}/GetTask", json={"id": task_id}), 404, "not_found")


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, decoded data) of each server-sent event; comments are skipped."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").lstrip())


@pytest.mark.parametrize("path", ["/v1/tasks:watch", f"{RPC}/Watch"])
def test_watch_as_server_sent_events(alice: httpx.Client, path: str) -> None:
    method = "GET" if path.startswith("/v1") else "POST"
    with alice.stream(method, path, headers={"Accept": "text/event-stream"}) as watch:
        assert watch.status_code == 200
        assert watch.headers["content-type"].startswith("text/event-stream")
        created = create(alice, "watched")  # the watch is live once the status is in
        event, data = next(sse_events(watch.iter_lines()))
    assert event == "message"
    assert data == {"change_type": "CHANGE_TYPE_CREATED", "task": created}


def test_watch_as_json_lines(alice: httpx.Client) -> None:
    with alice.stream("GET", "/v1/tasks:watch", headers={"Accept": "application/x-ndjson"}) as w:
        assert w.status_code == 200
        assert w.headers["content-type"] == "application/x-ndjson"
        created = create(alice, "watched")
        alice.post(f"/v1/tasks/{created['id']}:complete", json={})
        lines = w.iter_lines()
        first, second = json.loads(next(lines)), json.loads(next(lines))
    assert first == {"result": {"change_type": "CHANGE_TYPE_CREATED", "task": created}}
    assert second["result"]["change_type"] == "CHANGE_TYPE_COMPLETED"


def test_another_users_task_is_not_found(tasks: Stack, alice: httpx.Client) -> None:
    task = create(alice, "mine")
    with client(tasks, "bob") as bob:
        message = assert_error(bob.get(f"/v1/tasks/{task['id']}"), 404, "not_found")
        assert_error(bob.delete(f"/v1/tasks/{task['id']}"), 404, "not_found")
    assert task["id"] in message
    assert alice.get(f"/v1/tasks/{task['id']}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "says"),
    [
        ("POST", "/v1/tasks", None, {"title": ""}, "title"),  # the back-end's check
        ("GET", "/v1/tasks/abc", None, None, "id"),
        ("GET", "/v1/tasks", {"page_size": "-1"}, None, "page_size"),
        ("GET", "/v1/tasks", {"page_token": "nonsense"}, None, "page"),
        ("PATCH", "/v1/tasks/1", {"update_mask": "created_at"}, {"title": "x"}, "update_mask"),
        ("GET", "/v1/tasks", {"page_size": "ten"}, None, "invalid request"),  # the gateway's
        ("GET", "/v1/tasks", {"bogus": "1"}, None, "unknown query parameter 'bogus'"),
        ("POST", "/v1/tasks", None, b"{not json", "malformed JSON"),
        ("POST", "/v1/tasks", None, {"title": "x", "nope": 1}, "invalid request"),
        ("GET", "/v1/tasks/1", None, {"title": "x"}, "takes no request body"),
        ("POST", f"{RPC}/GetTask", None, [1], "must be a JSON object"),
    ],
)
def test_bad_input_is_400(
    alice: httpx.Client, method: str, path: str, params: Any, body: Any, says: str
) -> None:
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
    answer = alice.request(method, path, params=params, content=content)
    assert says in assert_error(answer, 400, "invalid_argument")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/tasks/1"), ("GET", "/v1/tasks:watch"), ("POST", f"{RPC}/GetTask")],
)
def test_a_token_is_required(tasks: Stack, method: str, path: str) -> None:
    with client(tasks, user=None) as anonymous:
        answer = anonymous.request(method, path, json={})
    assert_error(answer, 401, "unauthenticated")
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_the_rpc_shape_tells_nothing_before_the_token(tasks: Stack) -> None:
    with client(tasks, user=None) as anonymous:
        assert anonymous.post("/no.such.Service/Method").status_code == 401
        assert anonymous.get(f"{RPC}/GetTask").status_code == 401
    with client(tasks) as c:
        assert_error(c.post("/no.such.Service/Method", json={}), 404, "not_found")
        wrong = c.get(f"{RPC}/GetTask")
        assert_error(wrong, 405, "invalid_argument")
        assert wrong.headers["allow"] == "POST"


def test_unknown_paths_and_other_methods(alice: httpx.Client) -> None:
    unknown = alice.get("/v1/nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    wrong = alice.put("/v1/tasks/1", json={})
    assert_error(wrong, 405, "invalid_argument")
    assert wrong.headers["allow"] == "DELETE, GET, PATCH"


def test_the_gateways_own_routes_are_untouched(tasks: Stack, alice: httpx.Client) -> None:
    assert alice.get("/health").status_code == 200
    not_allowed = alice.delete("/messages")
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
    sent = alice.post("/messages", json={"content": {"type": "text", "text": "hello"}})
    assert sent.status_code == 200, sent.text
    with client(tasks, user=None) as anonymous:
        assert anonymous.get("/nowhere").status_code == 404  # no token needed to learn that


def test_openapi_json_adds_the_tasks_routes_to_the_gateways_own(tasks: Stack) -> None:
    document = openapi(tasks)
    committed = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    for path, operations in committed["paths"].items():
        assert document["paths"][path] == operations
    paths = document["paths"]
    assert set(paths["/v1/tasks"]) == {"get", "post"}
    assert set(paths["/v1/tasks/{id}"]) == {"get", "patch", "delete"}
    assert set(paths["/v1/tasks/{id}:complete"]) == {"post"}
    assert set(paths["/v1/tasks:watch"]["get"]["responses"]["200"]["content"]) == {
        "text/event-stream",
        "application/x-ndjson",
    }
    assert {f"{RPC}/{m}" for m in ("CreateTask", "GetTask", "Watch")} <= set(paths)
    assert "dialog.tasks.v1.Task" in document["components"]["schemas"]


# --- failures after the stream started: a gateway of its own, with tokens that expire -------


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"JWT_LEEWAY_S": "0", "SSE_HEARTBEAT_MS": "200"}
    with running_stack(Path(tmp_path_factory.mktemp("transcoding")), **env) as s:
        wait_until(lambda: "/v1/tasks" in openapi(s)["paths"], LEARN_TIMEOUT_S, "Tasks routes")
        yield s


def test_an_idle_watch_as_events_gets_heartbeats(fragile: Stack) -> None:
    headers = {"Accept": "text/event-stream"}
    with client(fragile, "idle") as c, c.stream("GET", "/v1/tasks:watch", headers=headers) as w:
        lines = w.iter_lines()
        assert [next(lines), next(lines), next(lines)] == [": heartbeat", "", ": heartbeat"]


def test_a_watch_ends_in_band_when_the_token_expires(fragile: Stack) -> None:
    with (
        client(fragile, "expiring") as c,
        c.stream(
            "GET",
            "/v1/tasks:watch",
            headers={"Authorization": "Bearer " + fragile.token("expiring", ttl_s=3)},
        ) as watch,
    ):
        assert watch.status_code == 200
        last = json.loads(next(watch.iter_lines()))
    assert last == {"error": {"code": "unauthenticated", "message": "token expired", "details": []}}


def test_a_watch_ends_in_band_when_the_backend_dies(fragile: Stack) -> None:
    headers = {"Accept": "text/event-stream"}
    with client(fragile, "watcher") as c, c.stream("GET", "/v1/tasks:watch", headers=headers) as w:
        assert w.status_code == 200
        tasks = next(p for p in fragile.processes if p.name == "tasks")
        tasks.popen.kill()
        event, data = next(sse_events(w.iter_lines()))
    assert event == "error"
    assert data["error"]["code"] == "unavailable"
    assert data["error"]["message"] == "the back-end is unavailable"


def test_a_watch_ends_in_band_when_the_gateway_drains(fragile: Stack) -> None:
    if all(p.popen.poll() is not None for p in fragile.processes if p.name == "tasks"):
        fragile.start("tasks", "backend", "tasks")  # after the test before
    # Polled as a user of its own: the polls must not spend the watching user's rate limit.
    with client(fragile, "drained-poll") as poll:
        wait_until(lambda: poll.get("/v1/tasks").status_code == 200, 20, "the tasks back-end")
    with client(fragile, "drained") as c:
        headers = {"Accept": "text/event-stream"}
        with c.stream("GET", "/v1/tasks:watch", headers=headers) as watch:
            assert watch.status_code == 200
            gateway = next(p for p in fragile.processes if p.name == "gateway")
            gateway.popen.send_signal(signal.SIGTERM)
            event, data = next(sse_events(watch.iter_lines()))
    assert event == "error"
    assert data == {
        "error": {
            "code": "draining",
            "message": "the gateway is draining; reconnect",
            "details": [],
        }
    }
    assert gateway.popen.wait(timeout=30) == 0
