"""The caller's identity comes from the token only; client-supplied identity is dropped."""

from __future__ import annotations

import grpc

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.stack import Stack


def task_message(kind: str, text: str = "") -> message_pb2.Message:
    msg = message_pb2.Message(content=message_pb2.Content(type=kind, text=text))
    msg.context.service = "tasks"
    return msg


async def send(
    stack: Stack, token: str, msg: message_pb2.Message, *extra: tuple[str, str]
) -> list[message_pb2.Message]:
    creds = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    async with grpc.aio.secure_channel(stack.grpc_target, creds) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            gateway_pb2.SendRequest(message=msg),
            metadata=(("authorization", f"Bearer {token}"), *extra),
        )
        return [r.message async for r in call]


async def test_client_identity_metadata_is_ignored(stack: Stack) -> None:
    alice, mallory = stack.token("alice-id"), stack.token("mallory-id")
    created = await send(stack, alice, task_message("task.create", "alice's secret task"))
    assert created[-1].content.type == "task"
    forged = await send(
        stack, mallory, task_message("task.list"),
        ("x-dialog-user", "alice-id"), ("x-user-id", "alice-id"),
    )  # fmt: skip
    listing = forged[-1]
    assert listing.content.type == "task.list"
    assert list(listing.content.data["tasks"]) == []
    own = await send(stack, alice, task_message("task.list"))
    titles = [t["title"] for t in own[-1].content.data["tasks"]]
    assert titles == ["alice's secret task"]
