"""The README's quick-start session, command for command, against real processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.stack import ROOT, Stack

GRPCURL = Path(sys.executable).parent / "grpcurl"
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def run(stack: Stack, *cmd: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=stack.workdir, env=stack.env(), capture_output=True, text=True, timeout=timeout_s
    )


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run(stack, sys.executable, "-m", "gateway", *args)


def test_readme_curl_example(stack: Stack) -> None:
    token = cli(stack, "token", "--sub", "alice").stdout.strip()
    assert token.count(".") == 2
    curl = shutil.which("curl")
    assert curl, "curl is needed for the README example"
    result = run(
        stack,
        curl, "-sS", "--cacert", "certs/ca.pem", "-X", "POST",
        f"https://localhost:{stack.ports['http']}/messages",
        "-H", f"Authorization: Bearer {token}",
        "-H", "Content-Type: application/json",
        "-d", '{"role":"user","content":{"type":"text","text":"Ping"}}',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["message"]["content"] == {"type": "text", "text": "Ping"}
    assert body["replies"][-1]["content"]["text"] == "Ping"


def test_get_jwt_script_prints_a_token(stack: Stack) -> None:
    result = run(stack, str(ROOT / "scripts" / "get-jwt.sh"), "--sub", "alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().count(".") == 2


def test_cli_send_streams_the_reply(stack: Stack) -> None:
    result = cli(stack, "send", "hello from the cli", "--url", stack.ws_url)
    assert result.returncode == 0, result.stderr
    assert "hello from the cli" in result.stdout


def test_cli_chat_session(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "chat", "--url", stack.ws_url],
        cwd=stack.workdir,
        env=stack.env(),
        input="first line\n/quit\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "first line" in result.stdout


def test_grpcurl_lists_and_calls_through_reflection(stack: Stack) -> None:
    token = stack.token("grpcurl-user")
    auth = ("-H", f"authorization: Bearer {token}")
    listed = run(stack, str(GRPCURL), "-cacert", "certs/ca.pem", *auth, stack.grpc_target, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"dialog.v1.Gateway", "grpc.health.v1.Health"} <= services
    called = run(
        stack,
        str(GRPCURL), "-cacert", "certs/ca.pem",
        "-H", f"authorization: Bearer {token}",
        "-d", json.dumps({"message": {"content": {"type": "text", "text": "via grpcurl"}}}),
        stack.grpc_target, "dialog.v1.Gateway/Send",
    )  # fmt: skip
    assert called.returncode == 0, called.stderr
    assert "via grpcurl" in called.stdout
    health = run(
        stack, str(GRPCURL), "-cacert", "certs/ca.pem", *auth, stack.grpc_target,
        "grpc.health.v1.Health/Check",
    )  # fmt: skip
    assert '"status": "SERVING"' in health.stdout, health.stdout + health.stderr


def test_reflection_needs_a_token(stack: Stack) -> None:
    listed = run(stack, str(GRPCURL), "-cacert", "certs/ca.pem", stack.grpc_target, "list")
    assert listed.returncode != 0
    assert "Unauthenticated" in listed.stderr


def test_buf_curl_lists_methods(stack: Stack) -> None:
    assert BUF.exists(), "buf is installed by 'make test' into .tools/"
    token = cli(stack, "token", "--sub", "alice").stdout.strip()
    result = run(
        stack, str(BUF), "curl", "--protocol", "grpc", "--cacert", "certs/ca.pem",
        "--reflect-header", f"Authorization: Bearer {token}",
        "--list-methods", f"https://localhost:{stack.ports['grpc']}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "dialog.v1.Gateway/Send" in result.stdout
