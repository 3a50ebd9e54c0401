"""Relayed and transcoded calls with real processes and real clients: ``MAX_INFLIGHT`` counts
them with dialog messages; browsers get CORS preflights from what each path has; and HTTP
clients get the back-end's allowlisted response metadata as ``Grpc-Metadata-*`` and
``Grpc-Trailer-*`` headers (the probe of tests/support/metadata_probe.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest

from dialog.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from tests.support.metadata_probe import (
    DATA_BIN_VALUE,
    FORWARDED,
    HIDDEN,
)
from tests.support.probe import SERVED_BY, TRAILER_BIN_VALUE
from tests.support.stack import ROOT, Process, Stack, port_open, running_stack, wait_until

ORIGIN = "https://app.example"
RPC = "/dialog.tasks.v1.Tasks"
PROBE = "/probe.v1.Probe"
LEARN_TIMEOUT_S = 20
TIMEOUT_S = 10
SSE = {"Accept": "text/event-stream"}


def client(stack: Stack, user: str = "", **headers: str) -> httpx.AsyncClient:
    token = stack.token(user or "relayed-user")
    return httpx.AsyncClient(
        base_url=stack.base_url,
        verify=stack.ssl_context(),
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=TIMEOUT_S,
    )


def learned(stack: Stack, method: str, path: str) -> bool:
    token = stack.token("learner")
    with httpx.Client(base_url=stack.base_url, verify=stack.ssl_context(), timeout=5) as c:
        body = b"{}" if method == "POST" else None  # a GET route takes no body
        answer = c.request(method, path, headers={"Authorization": f"Bearer {token}"}, content=body)
    return answer.status_code == 200


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both reference back-ends and a gateway with ``MAX_INFLIGHT`` 2 and one allowed
    origin, once it has learned ``Tasks``."""
    env = {"MAX_INFLIGHT": "2", "ALLOWED_ORIGINS": ORIGIN}
    with running_stack(Path(tmp_path_factory.mktemp("relayed")), **env) as stack:
        wait_until(lambda: learned(stack, "GET", "/v1/tasks"), LEARN_TIMEOUT_S, "Tasks routes")
        yield stack


# --- MAX_INFLIGHT ------------------------------------------------------------------------------


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + LEARN_TIMEOUT_S
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def two_watches(
    stack: Stack, http: httpx.AsyncClient, tasks: tasks_pb2_grpc.TasksStub
) -> AsyncIterator[None]:
    """A ``Watch`` open on the gRPC port and one as server-sent events: two calls in flight
    (the limit), until the block ends."""
    me = (("authorization", f"Bearer {stack.token('watcher')}"),)
    watch = tasks.Watch(tasks_pb2.WatchRequest(), metadata=me)
    try:
        await asyncio.wait_for(watch.initial_metadata(), TIMEOUT_S)
        async with http.stream("GET", "/v1/tasks:watch", headers=SSE) as events:
            assert events.status_code == 200
            yield
    finally:
        watch.cancel()


async def test_relayed_and_transcoded_calls_count_against_max_inflight(busy: Stack) -> None:
    credentials = grpc.ssl_channel_credentials(busy.ca_file.read_bytes())
    me = (("authorization", f"Bearer {busy.token('caller')}"),)
    async with (
        grpc.aio.secure_channel(busy.grpc_target, credentials) as channel,
        client(busy, "caller") as http,
    ):
        tasks = tasks_pb2_grpc.TasksStub(channel)
        for _ in range(2):  # twice: the places of the first round were all given back
            async with two_watches(busy, http, tasks):
                refused = await http.get("/v1/tasks")
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] == "server_busy"
                message = {"content": {"type": "text", "text": "hello"}}
                sent = await http.post("/messages", json=message)  # the same count
                assert (sent.status_code, sent.json()["error"]["code"]) == (503, "server_busy")
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await tasks.GetTask(
                        tasks_pb2.GetTaskRequest(id="1"), metadata=me, timeout=TIMEOUT_S
                    )
                assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
                assert dict(failed.value.trailing_metadata() or ())["retry-after"] == "1"

            async def free() -> bool:
                return (await http.get("/v1/tasks")).status_code == 200

            await until(free, "the watches' places given back")
            listed = await tasks.ListTasks(tasks_pb2.ListTasksRequest(), metadata=me)
            assert list(listed.tasks) == []


# --- CORS --------------------------------------------------------------------------------------


async def preflight(stack: Stack, method: str, path: str, **headers: str) -> httpx.Response:
    asked = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": (
            "authorization, content-type, idempotency-key, traceparent, tracestate"
        ),
        **headers,
    }
    async with httpx.AsyncClient(verify=stack.ssl_context(), timeout=TIMEOUT_S) as c:
        return await c.options(f"{stack.base_url}{path}", headers=asked)


def methods(answer: httpx.Response) -> set[str]:
    return set(answer.headers["access-control-allow-methods"].split(", "))


@pytest.mark.parametrize(
    ("method", "path", "offered"),
    [
        ("PATCH", "/v1/tasks/1", {"GET", "PATCH", "DELETE"}),
        ("DELETE", "/v1/tasks/1", {"GET", "PATCH", "DELETE"}),
        ("POST", "/v1/tasks", {"GET", "POST"}),
        ("GET", "/v1/tasks:watch", {"GET"}),
        ("POST", f"{RPC}/UpdateTask", {"POST"}),
        ("POST", "/messages", {"POST"}),  # the gateway's own routes too
    ],
)
async def test_a_preflight_offers_the_methods_the_path_has(
    busy: Stack, method: str, path: str, offered: set[str]
) -> None:
    answer = await preflight(busy, method, path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert methods(answer) == offered
    allowed = set(answer.headers["access-control-allow-headers"].split(", "))
    assert {
        "authorization",
        "content-type",
        "idempotency-key",
        "traceparent",
        "tracestate",
        "x-request-id",
    } <= allowed
    assert "Origin" in answer.headers.get_list("vary")
    assert answer.headers["access-control-max-age"] == "600"


async def test_a_preflight_for_a_method_the_path_lacks_is_refused(busy: Stack) -> None:
    answer = await preflight(busy, "PUT", "/v1/tasks/1")
    assert (answer.status_code, answer.text) == (400, "Disallowed CORS method")
    assert methods(answer) == {"GET", "PATCH", "DELETE"}


async def test_a_preflight_for_a_header_pages_may_not_send_is_refused(busy: Stack) -> None:
    answer = await preflight(
        busy, "PATCH", "/v1/tasks/1", **{"Access-Control-Request-Headers": "cookie"}
    )
    assert (answer.status_code, answer.text) == (400, "Disallowed CORS headers")


async def test_an_rpc_path_answers_alike_whether_its_service_exists_or_not(busy: Stack) -> None:
    known = await preflight(busy, "POST", f"{RPC}/GetTask")
    unknown = await preflight(busy, "POST", "/no.such.Service/Method")
    assert known.status_code == unknown.status_code == 200
    drop = {"date"}
    assert {k: v for k, v in known.headers.items() if k not in drop} == {
        k: v for k, v in unknown.headers.items() if k not in drop
    }


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "https://app.example.evil"])
async def test_a_foreign_origin_gets_no_cors_header(busy: Stack, origin: str) -> None:
    answer = await preflight(busy, "PATCH", "/v1/tasks/1", Origin=origin)
    assert (answer.status_code, answer.text) == (400, "Disallowed CORS origin")
    assert not [name for name in answer.headers if name.startswith("access-control-")]
    async with client(busy, Origin=origin) as c:
        listed = await c.get("/v1/tasks")
    assert listed.status_code == 200  # not a browser's to read
    assert not [name for name in listed.headers if name.startswith("access-control-")]


async def test_a_cross_origin_call_carries_the_origin_back(busy: Stack) -> None:
    async with client(busy, "cors-user", Origin=ORIGIN) as c:
        created = await c.post("/v1/tasks", json={"title": "from a page"})
        task_id = created.json()["task"]["id"]
        changed = await c.patch(
            f"/v1/tasks/{task_id}", params={"update_mask": "title"}, json={"title": "changed"}
        )
        deleted = await c.delete(f"/v1/tasks/{task_id}")
    for answer in (created, changed, deleted):
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "Origin" in answer.headers.get_list("vary")


# --- response metadata -------------------------------------------------------------------------


def start_metadata_probe(stack: Stack) -> Process:
    """The metadata probe back-end on the ``chat`` port, with the ``chat`` certificate."""
    log_path = stack.workdir / "metadata-probe.log"
    env = {"PROBE_PKI": str(stack.workdir / "certs"), "PROBE_PORT": str(stack.ports["chat"])}
    popen = subprocess.Popen(
        [sys.executable, "-m", "tests.support.metadata_probe"],
        cwd=stack.workdir,
        env={**stack.env(**env), "PYTHONPATH": str(ROOT)},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    proc = Process("metadata-probe", popen, log_path)
    stack.processes.append(proc)
    wait_until(lambda: port_open(stack.ports["chat"]) or popen.poll() is not None, 20, "probe")
    assert popen.poll() is None, proc.log()
    return proc


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The gateway in front of the metadata probe, whose ``forward_metadata`` lists
    ``FORWARDED`` (and not ``HIDDEN``), once it has learned ``probe.v1.Probe``."""
    stack = Stack.create(Path(tmp_path_factory.mktemp("metadata")))
    backend = {
        "name": "probe",
        "target": f"127.0.0.1:{stack.ports['chat']}",
        "server_name": "chat",
        "timeout_ms": 5000,
        "forward_metadata": list(FORWARDED),
    }
    routes = {"backends": [backend], "rules": [], "default_backend": None}
    (stack.workdir / "config" / "routes.json").write_text(json.dumps(routes))
    try:
        start_metadata_probe(stack)
        stack.start_gateway(ALLOWED_ORIGINS=ORIGIN)
        wait_until(lambda: learned(stack, "POST", f"{PROBE}/Echo"), LEARN_TIMEOUT_S, "Probe")
        yield stack
    finally:
        stack.stop()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def passed_on(answer: httpx.Response) -> dict[str, list[str]]:
    """The ``grpc-metadata-*`` and ``grpc-trailer-*`` headers of ``answer``, each value."""
    found: dict[str, list[str]] = {}
    for name, value in answer.headers.multi_items():
        if name.startswith(("grpc-metadata-", "grpc-trailer-")):
            found.setdefault(name, []).append(value)
    return found


async def test_a_unary_answer_carries_the_allowed_headers_and_trailers(metadata: Stack) -> None:
    async with client(metadata) as c:
        answer = await c.post(f"{PROBE}/Echo", json={"text": "hi"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["text"] == "hi"
    assert passed_on(answer) == {
        f"grpc-metadata-{SERVED_BY}": ["metadata-probe"],
        "grpc-metadata-x-probe-note": ["first", "second"],
        "grpc-metadata-x-probe-data-bin": [b64(DATA_BIN_VALUE)],
        "grpc-trailer-x-probe-trailer": ["done"],
        "grpc-trailer-x-probe-trailer-bin": [b64(TRAILER_BIN_VALUE)],
    }
    for hidden in HIDDEN:
        assert not [name for name in answer.headers if hidden in name]


async def test_an_error_answer_carries_them_too_but_never_grpcs_own(metadata: Stack) -> None:
    async with client(metadata) as c:
        answer = await c.post(f"{PROBE}/Fail", json={"code": 5, "text": "gone"})
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "not_found"
    assert passed_on(answer) == {
        f"grpc-metadata-{SERVED_BY}": ["metadata-probe"],
        "grpc-trailer-x-probe-trailer-bin": [b64(TRAILER_BIN_VALUE)],
    }


@pytest.mark.parametrize("accept", ["text/event-stream", "application/x-ndjson"])
async def test_a_stream_carries_its_headers_and_not_its_trailers(
    metadata: Stack, accept: str
) -> None:
    async with (
        client(metadata) as c,
        c.stream("POST", f"{PROBE}/Count", json={"count": 2}, headers={"Accept": accept}) as s,
    ):
        assert s.status_code == 200
        body = [line async for line in s.aiter_lines()]
    assert passed_on(s) == {
        f"grpc-metadata-{SERVED_BY}": ["metadata-probe"],
        "grpc-metadata-x-probe-note": ["stream"],
    }
    assert any('"text":"1"' in line for line in body)


async def test_metadata_is_bounded_in_count_and_size(metadata: Stack) -> None:
    async with client(metadata) as c:
        answer = await c.post(f"{PROBE}/Echo", json={"text": "long", "count": 40})
    assert answer.status_code == 200, answer.text
    passed = passed_on(answer)
    assert sum(len(values) for values in passed.values()) == 32
    assert passed["grpc-metadata-x-probe-note"] == ["first", "second"]  # not the long one
    assert passed["grpc-metadata-x-probe-many"] == [str(i) for i in range(28)]
    assert not [name for name in passed if name.startswith("grpc-trailer-")]


async def test_pages_may_read_them_and_send_the_allowlisted_headers(metadata: Stack) -> None:
    async with client(metadata, Origin=ORIGIN) as c:
        answer = await c.post(f"{PROBE}/Echo", json={"text": "hi"})
    exposed = set(answer.headers["access-control-expose-headers"].split(", "))
    assert exposed == set(passed_on(answer))
    ask = await preflight(
        metadata, "POST", f"{PROBE}/Echo", **{"Access-Control-Request-Headers": "x-probe-note"}
    )
    assert ask.status_code == 200, ask.text
    assert set(FORWARDED) <= set(ask.headers["access-control-allow-headers"].split(", "))
