"""Back-end services through the gateway's public gRPC port, with real processes, driven by
``grpcurl`` and ``buf curl`` that know only the gateway's address: the gateway (``serve``) in
front of the probe back-end (tests/support/probe.py), and the reference stack's typed
``dialog.tasks.v1.Tasks``."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import ROOT, Stack, wait_until

GRPCURL = Path(sys.executable).parent / "grpcurl"
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
PROBE = "probe.v1.Probe"
LEARN_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def probe_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The gateway with one back-end, the probe, whose services only its reflection names."""
    stack = Stack.create(Path(tmp_path_factory.mktemp("proxy")))
    backend = {
        "name": "probe",
        "target": f"127.0.0.1:{stack.ports['chat']}",
        "server_name": "chat",
        "timeout_ms": 5000,
        "method_scopes": {f"{PROBE}/Secret": ["probe:secret"]},
    }
    routes = {"backends": [backend], "rules": [], "default_backend": None}
    (stack.workdir / "config" / "routes.json").write_text(json.dumps(routes))
    try:
        stack.start_probe()
        stack.start_gateway()
        yield stack
    finally:
        stack.stop()


def grpcurl(stack: Stack, *args: str, token: str | None = "") -> subprocess.CompletedProcess[str]:
    """``grpcurl`` against the gateway, with a token for ``sub`` "grpcurl-user" unless None."""
    auth = [] if token is None else ["-H", f"authorization: Bearer {token or user_token(stack)}"]
    return subprocess.run(
        [str(GRPCURL), "-cacert", "certs/ca.pem", *auth, *args],
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


def user_token(stack: Stack) -> str:
    return stack.token("grpcurl-user")


def listed(stack: Stack) -> set[str]:
    result = grpcurl(stack, stack.grpc_target, "list")
    return set(result.stdout.split()) if result.returncode == 0 else set()


@pytest.fixture(scope="module")
def learned(probe_stack: Stack) -> Stack:
    """The stack once the gateway has learned the probe's services from its reflection."""
    wait_until(
        lambda: PROBE in listed(probe_stack), LEARN_TIMEOUT_S, f"the gateway to list {PROBE}"
    )
    return probe_stack


def test_grpcurl_lists_the_backends_service_with_the_gateways_own(learned: Stack) -> None:
    assert {PROBE, "dialog.v1.Gateway", "grpc.health.v1.Health"} <= listed(learned)
    assert "dialog.backend.v1.Backend" not in listed(learned)


def test_grpcurl_describes_a_backend_method(learned: Stack) -> None:
    described = grpcurl(learned, learned.grpc_target, "describe", f"{PROBE}.Count")
    assert described.returncode == 0, described.stderr
    assert "rpc Count ( .probe.v1.ProbeRequest ) returns ( stream .probe.v1.ProbeReply )" in (
        described.stdout
    )


def test_grpcurl_calls_a_backend_method_as_the_verified_user(learned: Stack) -> None:
    called = grpcurl(
        learned,
        "-H", "x-request-id: e2e-1",
        "-d", json.dumps({"text": "through the gateway"}),
        learned.grpc_target, f"{PROBE}/Echo",
    )  # fmt: skip
    assert called.returncode == 0, called.stderr
    reply = json.loads(called.stdout)
    assert reply["text"] == "through the gateway"
    headers = {h["key"]: base64.b64decode(h.get("value", "")) for h in reply["headers"]}
    assert headers["x-dialog-user"] == b"grpcurl-user"
    assert headers["x-request-id"] == b"e2e-1"
    assert "authorization" not in headers
    # grpcurl sets no deadline: the back-end gets its timeout_ms (5 s, rounded up on the wire).
    assert 0 < reply["timeout_s"] < 5.5


def test_grpcurl_streams_from_a_backend(learned: Stack) -> None:
    called = grpcurl(learned, "-d", '{"count": 3}', learned.grpc_target, f"{PROBE}/Count")
    assert called.returncode == 0, called.stderr
    assert [reply["text"] for reply in json_documents(called.stdout)] == ["0", "1", "2"]


def json_documents(text: str) -> list[dict[str, str]]:
    """The JSON documents ``grpcurl`` prints one after another."""
    decoder, documents, rest = json.JSONDecoder(), [], text.strip()
    while rest:
        document, end = decoder.raw_decode(rest)
        documents.append(document)
        rest = rest[end:].lstrip()
    return documents


def test_a_backend_method_needs_a_token_and_its_scope(learned: Stack) -> None:
    anonymous = grpcurl(learned, "-d", "{}", learned.grpc_target, f"{PROBE}/Echo", token=None)
    assert anonymous.returncode != 0
    denied = grpcurl(learned, "-d", "{}", learned.grpc_target, f"{PROBE}/Secret")
    assert denied.returncode != 0
    assert "PermissionDenied" in denied.stderr


def test_buf_curl_calls_a_backend_method_through_reflection(learned: Stack) -> None:
    assert BUF.exists(), "buf is installed by 'make test' into .tools/"
    token = user_token(learned)
    result = subprocess.run(
        [
            str(BUF), "curl", "--protocol", "grpc", "--cacert", "certs/ca.pem",
            "--reflect-header", f"Authorization: Bearer {token}",
            "-H", f"Authorization: Bearer {token}",
            "-d", json.dumps({"text": "buf"}),
            f"https://localhost:{learned.ports['grpc']}/{PROBE}/Echo",
        ],
        cwd=learned.workdir, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"] == "buf"


def test_proxied_calls_have_grpc_server_metrics(learned: Stack) -> None:
    assert grpcurl(learned, "-d", "{}", learned.grpc_target, f"{PROBE}/Echo").returncode == 0
    with urllib.request.urlopen(
        f"{learned.base_url}/metrics", context=learned.ssl_context(), timeout=10
    ) as response:
        text = response.read().decode()
    labels = f'grpc_method="Echo",grpc_service="{PROBE}",grpc_type="unary"'
    assert f"grpc_server_started_total{{{labels}}}" in text
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}}' in text
    assert f"grpc_server_handling_seconds_count{{{labels}}}" in text


def test_the_tasks_service_through_the_gateway(stack: Stack) -> None:
    """``dialog.tasks.v1.Tasks`` of the reference ``tasks`` back-end (routes.json names it)."""
    token = stack.token("tasks-user")
    created = grpcurl(
        stack, "-d", json.dumps({"task": {"title": "buy milk"}}),
        stack.grpc_target, "dialog.tasks.v1.Tasks/CreateTask", token=token,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["task"]["title"] == "buy milk"
    page = grpcurl(stack, stack.grpc_target, "dialog.tasks.v1.Tasks/ListTasks", token=token)
    assert page.returncode == 0, page.stderr
    assert [t["title"] for t in json.loads(page.stdout)["tasks"]] == ["buy milk"]
