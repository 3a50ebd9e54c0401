"""The public gRPC surface with a real ``grpc.aio`` client over TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from tests.support.stack import Stack


def channel(stack: Stack) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(stack.ca_file.read_bytes())
    return grpc.aio.secure_channel(stack.grpc_target, creds)


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def text(msg_id: str, body: str, service: str = "") -> message_pb2.Message:
    msg = message_pb2.Message(id=msg_id, role=message_pb2.ROLE_USER)
    msg.content.type = "text"
    msg.content.text = body
    msg.context.service = service
    return msg


async def test_send_streams_ack_deltas_and_final(stack: Stack) -> None:
    async with channel(stack) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        call = stub.Send(
            gateway_pb2.SendRequest(message=text("g1", "hi there")), metadata=md(stack.token())
        )
        replies = [r.message async for r in call]
    assert replies[0].content.type == "ack" and replies[0].seq >= 1
    assert [r.content.type for r in replies[1:-1]] == ["delta", "delta"]
    assert replies[-1].content.text == "hi there"
    assert all(r.context.reply_to == "g1" for r in replies)


async def test_converse_handles_concurrent_messages(stack: Stack) -> None:
    async def requests() -> AsyncIterator[gateway_pb2.ConverseRequest]:
        for i in range(5):
            yield gateway_pb2.ConverseRequest(message=text(f"c{i}", f"message {i}"))

    async with channel(stack) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        call = stub.Converse(requests(), metadata=md(stack.token()))
        finals = {
            r.message.context.reply_to: r.message.content.text
            async for r in call
            if r.message.content.type == "text"
        }
    assert finals == {f"c{i}": f"message {i}" for i in range(5)}


async def test_subscribe_receives_deliveries_in_order(stack: Stack) -> None:
    token = stack.token()
    async with channel(stack) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        sub = stub.Subscribe(gateway_pb2.SubscribeRequest(), metadata=md(token))
        await asyncio.wait_for(sub.wait_for_connection(), 10)
        sent = stub.Send(gateway_pb2.SendRequest(message=text("s1", "x y")), metadata=md(token))
        [r async for r in sent]
        seen = []
        async for r in sub:
            seen.append(r.message)
            if r.message.content.type == "text" and r.message.role == message_pb2.ROLE_ASSISTANT:
                break
        sub.cancel()
    assert seen[0].id == "s1" and seen[0].role == message_pb2.ROLE_USER
    assert [m.seq for m in seen] == sorted(m.seq for m in seen)


async def send_status(stack: Stack, msg: message_pb2.Message, token: str | None) -> grpc.StatusCode:
    """The status a ``Send`` call ends with (OK when it succeeds)."""
    async with channel(stack) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).Send(
            gateway_pb2.SendRequest(message=msg), metadata=md(token) if token else None
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_send_without_token_is_unauthenticated(stack: Stack) -> None:
    assert await send_status(stack, text("u", "x"), None) == grpc.StatusCode.UNAUTHENTICATED


async def test_send_without_content_is_invalid_argument(stack: Stack) -> None:
    empty = message_pb2.Message(id="empty")
    assert await send_status(stack, empty, stack.token()) == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_service_is_unimplemented(stack: Stack) -> None:
    msg = text("n", "x", "nowhere")
    assert await send_status(stack, msg, stack.token()) == grpc.StatusCode.UNIMPLEMENTED


async def test_health_service_is_public_and_reports_backends(stack: Stack) -> None:
    async with channel(stack) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "chat", "tasks"):
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
