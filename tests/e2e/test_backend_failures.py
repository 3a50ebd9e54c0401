"""Back-end failures seen from real clients of real processes: a back-end that dies in the
middle of a stream, and the circuit breaker that a dead back-end opens.

The chat back-end is the recording back-end (tests/support/recorder.py), so a test can
tell which messages reached it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from tests.support.recorder import received
from tests.support.stack import Process, Stack, wait_until

FRAME_TIMEOUT_S = 10.0
BREAKER_OPEN_MS = 6000


def start_stack(workdir: Path, **gateway_env: str) -> Stack:
    s = Stack.create(workdir)
    s.start_recorder()
    s.start("tasks", "backend", "tasks")
    s.start_gateway(**gateway_env)
    return s


def recorder(s: Stack) -> Process:
    return next(p for p in s.processes if p.name == "recorder")


def kill_recorder(s: Stack) -> None:
    """The back-end dies at once (SIGKILL): no goodbye on its streams."""
    proc = recorder(s)
    proc.popen.kill()
    proc.popen.wait()
    s.processes.remove(proc)


def restart_recorder(s: Stack) -> None:
    """Start the recording back-end again on its port; wait until the gateway sees it."""
    s.start_recorder()
    wait_until(lambda: s.health_status() == 200, 30, "health 200 with the back-end back")


def health(s: Stack) -> dict[str, Any]:
    with httpx.Client(verify=s.ssl_context(), timeout=10) as c:
        body: dict[str, Any] = c.get(f"{s.base_url}/health").json()
    return body


def breaker_state(s: Stack) -> str:
    state: str = health(s)["backends"]["chat"]["breaker"]["state"]
    return state


def metric(s: Stack, name: str, **labels: str) -> float | None:
    with httpx.Client(verify=s.ssl_context(), timeout=10) as c:
        text = c.get(f"{s.base_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def post(s: Stack, text: str) -> httpx.Response:
    with httpx.Client(verify=s.ssl_context(), timeout=30) as c:
        return c.post(
            f"{s.base_url}/messages",
            json={"content": {"type": "text", "text": text}},
            headers={"Authorization": f"Bearer {s.token('resilience')}"},
        )


async def next_frame(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(FRAME_TIMEOUT_S):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path, HEALTH_INTERVAL_MS="200")
    try:
        yield s
    finally:
        s.stop()


async def test_a_backend_dying_mid_stream_gives_an_error_frame_and_the_socket_lives_on(
    stack: Stack,
) -> None:
    s = stack
    headers = {"Authorization": f"Bearer {s.token()}"}
    async with connect(s.ws_url, ssl=s.ssl_context(), additional_headers=headers) as ws:
        await ws.send(json.dumps({"id": "a", "content": {"type": "text", "text": "stall 2"}}))
        started = [await next_frame(ws) for _ in range(3)]
        assert [f["content"]["type"] for f in started] == ["ack", "delta", "delta"]

        await asyncio.to_thread(kill_recorder, s)
        error = await next_frame(ws)
        assert error["content"]["type"] == "error"
        assert error["content"]["data"]["code"] == "unavailable"
        assert error["context"]["reply_to"] == "a"

        # The gateway's health check sees the back-end gone, then back.
        await asyncio.to_thread(wait_until, lambda: s.health_status() == 503, 30, "health 503")
        await asyncio.to_thread(restart_recorder, s)

        # The same socket, a new back-end stream.
        await ws.send(json.dumps({"id": "b", "content": {"type": "text", "text": "again"}}))
        frames = [await next_frame(ws) for _ in range(2)]
    assert [f["content"]["type"] for f in frames] == ["ack", "text"]
    assert frames[1]["content"]["text"] == "again"
    assert frames[1]["context"]["reply_to"] == "b"
    assert [m["id"] for m in received(s.recorder_file)] == ["a", "b"]


def test_a_dead_backend_opens_the_breaker_until_a_trial_call_succeeds(tmp_path: Path) -> None:
    """Messages refused by the breaker are queued (202) like any message whose back-end is
    unavailable; queued deliveries go through the same breaker, so they may be the ones
    that make the half-open trial."""
    s = start_stack(
        tmp_path,
        HEALTH_INTERVAL_MS="200",
        BREAKER_FAILURES="2",
        BREAKER_OPEN_MS=str(BREAKER_OPEN_MS),
    )
    try:
        assert breaker_state(s) == "closed"
        assert metric(s, "dialog_backend_breaker_state", backend="chat") == 0

        kill_recorder(s)
        for _ in range(5):  # each message makes up to three attempts
            assert post(s, "anyone?").status_code != 200
            if breaker_state(s) == "open":
                break
        chat = health(s)["backends"]["chat"]
        assert chat["breaker"]["state"] == "open"
        assert chat["breaker"]["consecutive_failures"] >= 2
        assert metric(s, "dialog_backend_breaker_state", backend="chat") == 2
        assert metric(s, "dialog_backend_breaker_transitions_total", backend="chat", state="open")
        assert health(s)["backends"]["tasks"]["breaker"]["state"] == "closed"

        # The back-end is back, and healthy; while the breaker is open, messages are
        # refused at once (and queued) and none reaches it.
        restart_recorder(s)
        seen = len(received(s.recorder_file))
        refused = post(s, "too early")
        assert refused.status_code == 202, refused.text
        assert refused.json()["status"] == "queued"
        assert breaker_state(s) == "open"  # so the refusal above was the breaker's
        assert len(received(s.recorder_file)) == seen

        # After the open time: half-open, and the first call through is the trial.
        wait_until(
            lambda: breaker_state(s) != "open", BREAKER_OPEN_MS / 1000 + 10, "breaker not open"
        )
        assert metric(
            s, "dialog_backend_breaker_transitions_total", backend="chat", state="half_open"
        )
        wait_until(lambda: post(s, "after").status_code == 200, 30, "an answered message")
        assert breaker_state(s) == "closed"
        assert metric(s, "dialog_backend_breaker_state", backend="chat") == 0
        assert "after" in [m["text"] for m in received(s.recorder_file)[seen:]]
    finally:
        s.stop()
