"""``python -m adapters.chat`` / ``adapters.tasks`` as real processes: the env
is read, mutual TLS is served, SIGTERM stops them cleanly, and a bad setting
stops the start with one line naming the variable."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.stack import free_port

pytestmark = pytest.mark.e2e

PROJECT_DIR = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


def adapter_env(pki: Path, name: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "CHAT_", "TASKS_"))}
    env.update(
        {
            f"{name.upper()}_PORT": str(port),
            f"{name.upper()}_CERT_FILE": str(pki / f"{name}.pem"),
            f"{name.upper()}_KEY_FILE": str(pki / f"{name}-key.pem"),
            "MESH_CA_FILE": str(pki / "ca.pem"),
            **extra,
        }
    )
    return env


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Awaitable[asyncio.subprocess.Process]]]:
    processes: list[asyncio.subprocess.Process] = []

    async def start(name: str, env: dict[str, str]) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"adapters.{name}",
            cwd=PROJECT_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("name", ["chat", "tasks"])
async def test_adapter_process_serves_then_stops_on_sigterm(
    name, spawn, adapter_pki, mesh_channel, converse, make_message, final_of, tmp_path
) -> None:
    port = free_port()
    env = adapter_env(adapter_pki, name, port, TASKS_DB=str(tmp_path / "db" / "tasks.db"))
    process = await spawn(name, env)
    channel = mesh_channel(port, name)
    async with asyncio.timeout(START_TIMEOUT_S):
        await channel.channel_ready()
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=START_TIMEOUT_S)
    assert response.status == health_pb2.HealthCheckResponse.SERVING

    kind = "text" if name == "chat" else "task.list"
    session = converse(channel, "alice")
    replies = (await session.ask(make_message("p1", kind, "hi")))["p1"]
    assert final_of(replies).content.type == kind
    await session.call.done_writing()
    async with asyncio.timeout(STOP_TIMEOUT_S):
        assert await session.call.code() == grpc.StatusCode.OK

    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(STOP_TIMEOUT_S):
        code = await process.wait()
    assert code == 0
    if name == "tasks":
        assert (tmp_path / "db" / "tasks.db").is_file()


@pytest.mark.parametrize(
    ("name", "extra", "variable"),
    [
        ("chat", {"CHAT_PORT": "http"}, "CHAT_PORT"),
        ("chat", {"LLM_BASE_URL": "localhost:11434"}, "LLM_BASE_URL"),
        ("tasks", {"MAX_MESSAGE_BYTES": "-5"}, "MAX_MESSAGE_BYTES"),
        ("tasks", {"TASKS_CERT_FILE": "/nonexistent/tasks.pem"}, "TASKS_CERT_FILE"),
    ],
)
async def test_bad_setting_stops_the_start_with_one_line(
    name, extra, variable, spawn, adapter_pki, tmp_path
) -> None:
    env = adapter_env(adapter_pki, name, free_port(), TASKS_DB=str(tmp_path / "t.db"), **extra)
    process = await spawn(name, env)
    async with asyncio.timeout(START_TIMEOUT_S):
        _, stderr = await process.communicate()
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {variable}: ")
