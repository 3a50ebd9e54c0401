"""A message id is its idempotency key: a repeat is answered, not forwarded again."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
from websockets.asyncio.client import connect

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.stack import Stack


def post(stack: Stack, token: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    with httpx.Client(verify=stack.ssl_context(), timeout=30) as c:
        return c.post(
            f"{stack.base_url}/messages",
            json=body,
            headers={"Authorization": f"Bearer {token}", **headers},
        )


def tasks_of(stack: Stack, token: str) -> list[dict[str, Any]]:
    r = post(stack, token, {"content": {"type": "task.list"}, "context": {"service": "tasks"}})
    return r.json()["replies"][-1]["content"]["data"]["tasks"]  # type: ignore[no-any-return]


def duplicates_suppressed(stack: Stack) -> float:
    with httpx.Client(verify=stack.ssl_context(), timeout=10) as c:
        text = c.get(f"{stack.base_url}/metrics").text
    name = "dialog_gateway_duplicates_suppressed_total"
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_repeated_key_is_applied_once_and_answered_as_a_replay(stack: Stack) -> None:
    token = stack.token()
    before = duplicates_suppressed(stack)
    create = {"content": {"type": "task.create", "text": "once"}, "context": {"service": "tasks"}}
    first = post(stack, token, create, **{"Idempotency-Key": "create-1"})
    again = post(stack, token, create, **{"Idempotency-Key": "create-1"})
    assert first.status_code == again.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert [t["title"] for t in tasks_of(stack, token)] == ["once"]
    assert duplicates_suppressed(stack) == before + 1


def test_the_same_id_with_another_body_is_a_conflict(stack: Stack) -> None:
    token = stack.token()
    first = {"id": "c-1", "content": {"type": "text", "text": "first"}}
    assert post(stack, token, first).status_code == 200
    r = post(stack, token, {"id": "c-1", "content": {"type": "text", "text": "second"}})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "already_exists"


def test_ids_are_per_user(stack: Stack) -> None:
    body = {"id": "shared-id", "content": {"type": "text", "text": "mine"}}
    assert post(stack, stack.token(), body).status_code == 200
    other = post(stack, stack.token(), body)
    assert other.status_code == 200 and "idempotent-replayed" not in other.headers


async def test_websocket_repeat_gets_a_flagged_ack_and_the_same_reply(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.token()}"}
    frame = json.dumps({"id": "w-1", "content": {"type": "text", "text": "hello again"}})
    finals: list[dict[str, Any]] = []
    acks: list[dict[str, Any]] = []
    async with connect(stack.ws_url, ssl=stack.ssl_context(), additional_headers=headers) as ws:
        for _ in range(2):
            await ws.send(frame)
            while True:
                msg = json.loads(await ws.recv())
                if msg["content"]["type"] == "ack":
                    acks.append(msg)
                elif msg["content"]["type"] != "delta":
                    finals.append(msg)
                    break
    assert "data" not in acks[0]["content"]
    assert acks[1]["content"]["data"] == {"replay": True}
    assert acks[0]["seq"] == acks[1]["seq"]
    assert finals[0] == finals[1]


async def test_grpc_send_repeat_is_a_replay(stack: Stack) -> None:
    token = stack.token()
    msg = message_pb2.Message(id="g-1", content=message_pb2.Content(type="text", text="twice"))
    creds = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    answers = []
    async with grpc.aio.secure_channel(stack.grpc_target, creds) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        for _ in range(2):
            call = stub.Send(
                gateway_pb2.SendRequest(message=msg),
                metadata=(("authorization", f"Bearer {token}"),),
            )
            answers.append([r.message async for r in call])
    first, again = answers
    assert not first[0].content.data.fields
    assert again[0].content.data["replay"] is True
    assert again[-1] == first[-1]
    assert [m.content.type for m in again] == ["ack", "text"]
