"""A dead back-end: clear errors within the route's timeout, and health shows it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.stack import Stack, running_stack, wait_until

TIMEOUT_MS = 3000


@pytest.fixture(scope="module")
def stack_without_chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Only the tasks back-end runs; chat's port is closed."""
    s = Stack.create(Path(tmp_path_factory.mktemp("down")))
    try:
        s.start_backends()
        chat = next(p for p in s.processes if p.name == "chat")
        chat.stop()
        s.processes.remove(chat)
        proc = s.start("gateway", "serve", BACKEND_CHAT_TIMEOUT_MS=str(TIMEOUT_MS))
        wait_until(lambda: s.health_status() == 503 or proc.popen.poll() is not None, 30, "health")
        yield s
    finally:
        s.stop()


def test_health_is_503_naming_the_dead_backend(stack_without_chat: Stack) -> None:
    with httpx.Client(verify=stack_without_chat.ssl_context(), timeout=10) as c:
        r = c.get(f"{stack_without_chat.base_url}/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "NOT_SERVING"
    assert body["backends"]["chat"]["status"] == "NOT_SERVING"
    assert body["backends"]["chat"]["consecutive_failures"] >= 1
    assert body["backends"]["tasks"]["status"] == "SERVING"


def test_http_post_to_dead_backend_is_503_within_timeout(stack_without_chat: Stack) -> None:
    s = stack_without_chat
    started = time.monotonic()
    with httpx.Client(verify=s.ssl_context(), timeout=30) as c:
        r = c.post(
            f"{s.base_url}/messages",
            json={"role": "user", "content": {"type": "text", "text": "anyone?"}},
            headers={"Authorization": f"Bearer {s.token()}"},
        )
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "unavailable"
    assert time.monotonic() - started < TIMEOUT_MS / 1000 + 5
    # The other back-end still works.
    with httpx.Client(verify=s.ssl_context(), timeout=30) as c:
        ok = c.post(
            f"{s.base_url}/messages",
            json={"content": {"type": "task.list"}, "context": {"service": "tasks"}},
            headers={"Authorization": f"Bearer {s.token()}"},
        )
    assert ok.status_code == 200, ok.text


async def test_grpc_send_to_dead_backend_is_unavailable(stack_without_chat: Stack) -> None:
    s = stack_without_chat
    creds = grpc.ssl_channel_credentials(s.ca_file.read_bytes())
    async with grpc.aio.secure_channel(s.grpc_target, creds) as ch:
        msg = message_pb2.Message(content=message_pb2.Content(type="text", text="x"))
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            gateway_pb2.SendRequest(message=msg),
            metadata=(("authorization", f"Bearer {s.token()}"),),
        )
        replies = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for r in call:
                replies.append(r.message)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [m.content.type for m in replies] == ["ack"]


async def test_ws_dead_backend_is_an_error_frame(stack_without_chat: Stack) -> None:
    from websockets.asyncio.client import connect

    s = stack_without_chat
    headers = {"Authorization": f"Bearer {s.token()}"}
    async with connect(s.ws_url, ssl=s.ssl_context(), additional_headers=headers) as ws:
        await ws.send(json.dumps({"id": "d", "content": {"type": "text", "text": "x"}}))
        frames = [json.loads(await ws.recv()) for _ in range(2)]
    assert frames[0]["content"]["type"] == "ack"
    assert frames[1]["content"]["type"] == "error"
    assert frames[1]["content"]["data"]["code"] == "unavailable"
    assert frames[1]["context"]["reply_to"] == "d"


def test_backend_that_dies_shows_not_serving(tmp_path: Path) -> None:
    with running_stack(tmp_path, HEALTH_INTERVAL_MS="300") as s:
        next(p for p in s.processes if p.name == "tasks").stop()
        wait_until(lambda: s.health_status() == 503, 10, "health 503 after tasks died")


def test_a_failed_message_can_be_retried_with_the_same_id(stack_without_chat: Stack) -> None:
    """A message that got an error was not applied: its id is free for the retry."""
    s = stack_without_chat
    body = {"id": "retry-me", "content": {"type": "text", "text": "x"}}
    token = s.token()
    with httpx.Client(verify=s.ssl_context(), timeout=30) as c:
        codes = [
            c.post(
                f"{s.base_url}/messages", json=body, headers={"Authorization": f"Bearer {token}"}
            ).status_code
            for _ in range(2)
        ]
    assert codes == [503, 503]
