"""A dead back-end: messages are queued durably (202 / a queued ack) within the route's
timeout, health shows it, and the other back-ends keep working."""

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


def test_http_post_to_dead_backend_is_202_queued_within_timeout(stack_without_chat: Stack) -> None:
    s = stack_without_chat
    started = time.monotonic()
    with httpx.Client(verify=s.ssl_context(), timeout=30) as c:
        r = c.post(
            f"{s.base_url}/messages",
            json={"role": "user", "content": {"type": "text", "text": "anyone?"}},
            headers={"Authorization": f"Bearer {s.token()}"},
        )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued"
    [ack] = body["replies"]
    assert ack["content"] == {"type": "ack", "data": {"status": "queued"}}
    assert ack["context"]["reply_to"] == body["message"]["id"]
    assert time.monotonic() - started < TIMEOUT_MS / 1000 + 5
    # The other back-end still works.
    with httpx.Client(verify=s.ssl_context(), timeout=30) as c:
        ok = c.post(
            f"{s.base_url}/messages",
            json={"content": {"type": "task.list"}, "context": {"service": "tasks"}},
            headers={"Authorization": f"Bearer {s.token()}"},
        )
    assert ok.status_code == 200, ok.text


async def test_grpc_send_to_dead_backend_is_acked_as_queued(stack_without_chat: Stack) -> None:
    s = stack_without_chat
    creds = grpc.ssl_channel_credentials(s.ca_file.read_bytes())
    async with grpc.aio.secure_channel(s.grpc_target, creds) as ch:
        msg = message_pb2.Message(content=message_pb2.Content(type="text", text="x"))
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            gateway_pb2.SendRequest(message=msg),
            metadata=(("authorization", f"Bearer {s.token()}"),),
        )
        replies = [r.message async for r in call]
        assert await call.code() == grpc.StatusCode.OK
    assert [m.content.type for m in replies] == ["ack", "ack"]
    assert "status" not in replies[0].content.data
    assert replies[1].content.data["status"] == "queued"


async def test_ws_dead_backend_is_a_queued_ack(stack_without_chat: Stack) -> None:
    from websockets.asyncio.client import connect

    s = stack_without_chat
    headers = {"Authorization": f"Bearer {s.token()}"}
    async with connect(s.ws_url, ssl=s.ssl_context(), additional_headers=headers) as ws:
        await ws.send(json.dumps({"id": "d", "content": {"type": "text", "text": "x"}}))
        frames = [json.loads(await ws.recv()) for _ in range(2)]
    assert frames[0]["content"] == {"type": "ack"}
    assert frames[1]["content"] == {"type": "ack", "data": {"status": "queued"}}
    assert frames[1]["context"]["reply_to"] == "d"


def test_backend_that_dies_shows_not_serving(tmp_path: Path) -> None:
    with running_stack(tmp_path, HEALTH_INTERVAL_MS="300") as s:
        next(p for p in s.processes if p.name == "tasks").stop()
        wait_until(lambda: s.health_status() == 503, 10, "health 503 after tasks died")


def test_a_repeat_of_a_queued_message_is_not_queued_twice(stack_without_chat: Stack) -> None:
    s = stack_without_chat
    body = {"id": "queued-once", "content": {"type": "text", "text": "x"}}
    token = s.token()
    with httpx.Client(verify=s.ssl_context(), timeout=30) as c:
        answers = [
            c.post(
                f"{s.base_url}/messages", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            for _ in range(2)
        ]
    assert [a.status_code for a in answers] == [202, 202]
    assert "idempotent-replayed" not in answers[0].headers
    assert answers[1].headers["idempotent-replayed"] == "true"
    assert answers[1].json()["message"] == answers[0].json()["message"]
