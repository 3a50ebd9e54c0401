"""Per-entity order on every surface: the next seq applies, an old one is acknowledged
without being forwarded, a gap is refused with the seq expected."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import connect

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.messages import post, task_titles
from tests.support.stack import Stack


def task(msg_id: str, seq: int, entity: str = "groceries") -> dict[str, Any]:
    return {
        "id": msg_id,
        "seq": seq,
        "content": {"type": "task.create", "text": msg_id},
        "context": {"service": "tasks", "entity": entity},
    }


def test_http_applies_in_order_refuses_a_gap_and_acknowledges_an_old_seq(stack: Stack) -> None:
    token = stack.token()
    assert post(stack, token, task("a", 1)).status_code == 200
    gap = post(stack, token, task("c", 3))
    assert gap.status_code == 409
    assert gap.json()["error"] == {
        "code": "failed_precondition",
        "message": "entity 'groceries' expects seq 2 next; send the missing messages first",
        "expected_seq": 2,
    }
    assert post(stack, token, task("b", 2)).status_code == 200
    old = post(stack, token, task("a-again", 1))
    assert old.status_code == 200 and old.headers["idempotent-replayed"] == "true"
    assert old.json()["replies"] == []
    assert task_titles(stack, token) == ["a", "b"]  # the gap and the old seq were not forwarded
    # The back-end got each message with its entity seq.
    assert post(stack, token, task("c", 3)).status_code == 200


def test_entities_are_per_user(stack: Stack) -> None:
    alice, bob = stack.token(), stack.token()
    assert post(stack, alice, task("a1", 1, "shared-name")).status_code == 200
    assert post(stack, bob, task("b1", 1, "shared-name")).status_code == 200
    assert (
        post(stack, bob, task("b1-again", 1, "shared-name")).headers.get("idempotent-replayed")
        == "true"
    )


def test_a_seq_without_an_entity_is_ignored(stack: Stack) -> None:
    token = stack.token()
    body = {"seq": 99, "content": {"type": "text", "text": "hello"}}
    r = post(stack, token, body)
    assert r.status_code == 200
    assert r.json()["message"]["seq"] == "1"  # the event log's seq, not the client's


async def test_websocket_gap_is_an_error_frame_with_the_expected_seq(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.token()}"}
    async with connect(stack.ws_url, ssl=stack.ssl_context(), additional_headers=headers) as ws:
        await ws.send(json.dumps(task("w5", 5)))
        error = json.loads(await ws.recv())
    assert error["content"]["type"] == "error"
    assert error["content"]["data"]["code"] == "failed_precondition"
    assert error["content"]["data"]["expected_seq"] == 1
    assert error["context"]["reply_to"] == "w5"


async def test_grpc_gap_is_failed_precondition_with_the_expected_seq(stack: Stack) -> None:
    msg = message_pb2.Message(id="g2", seq=2)
    msg.content.type = "task.create"
    msg.content.text = "g2"
    msg.context.service = "tasks"
    msg.context.entity = "inbox"
    creds = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    async with grpc.aio.secure_channel(stack.grpc_target, creds) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            gateway_pb2.SendRequest(message=msg),
            metadata=(("authorization", f"Bearer {stack.token()}"),),
        )
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in call:
                pass
        code = await call.code()
        trailers = dict(await call.trailing_metadata() or ())
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert trailers["x-dialog-expected-seq"] == "1"
