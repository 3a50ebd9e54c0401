"""The shared adapter base over real gRPC, real sockets and real mutual TLS:
the reply contract, dedup, concurrency, identity, health and reflection."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adapters.base import ConverseLimits, ConverseServicer, Message, error_reply, event, reply
from adapters.config import AdapterConfig
from adapters.runner import start
from adapters.servicer import STALLED_TEXT
from dialog.v1 import message_pb2
from gateway.certs import create_dev_certs

RPC_TIMEOUT_S = 10.0


def adapter_config(pki: Path, name: str) -> AdapterConfig:
    return AdapterConfig(
        name=name,
        host="127.0.0.1",
        port=0,
        cert_file=str(pki / f"{name}.pem"),
        key_file=str(pki / f"{name}-key.pem"),
        ca_file=str(pki / "ca.pem"),
    )


class ScriptedServicer(ConverseServicer):
    """Does what ``content.type`` says, and counts how often each request ran."""

    def __init__(self, limits: ConverseLimits | None = None) -> None:
        super().__init__(limits)
        self.calls: Counter[tuple[str, str]] = Counter()
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def handle(self, msg: Message, user: str) -> AsyncIterator[Message]:
        self.calls[(user, msg.id)] += 1
        kind, text = msg.content.type, msg.content.text
        if kind == "boom":
            raise RuntimeError("secret detail that must not leak")
        if kind == "silent":
            yield reply("delta", "partial")
            return
        if kind == "wait":
            await self.gate(text).wait()
        if kind == "release":
            self.gate(text).set()
        if kind == "big":
            yield reply("text", "x" * int(msg.content.data["size"]))
            return
        if kind == "bad":
            yield error_reply("bad request")
            return
        yield reply("delta", "part")
        yield event("noted", {"by": user})
        yield reply("text", f"{user}:{text}")
        yield reply("text", "never read")


@pytest.fixture
def servicer() -> ScriptedServicer:
    return ScriptedServicer()


@pytest.fixture
async def channel(servicer, adapter_runner, mesh_channel):
    server = await adapter_runner(servicer, "chat")
    return mesh_channel(server.port, "chat")


async def test_replies_are_deltas_and_events_then_one_stamped_final(
    channel, converse, make_message, final_of
) -> None:
    session = converse(channel, "alice")
    request = make_message("m1", "text", "hi", conversation_id="conv-9", service="chat")
    replies = (await session.ask(request))["m1"]

    assert [m.content.type for m in replies] == ["delta", "noted", "text"]
    assert [m.role for m in replies] == [
        message_pb2.ROLE_ASSISTANT,
        message_pb2.ROLE_EVENT,
        message_pb2.ROLE_ASSISTANT,
    ]
    final = final_of(replies)
    assert final.content.text == "alice:hi"
    for msg in replies:
        assert msg.context.reply_to == "m1"
        assert msg.context.conversation_id == "conv-9"
        assert msg.context.service == "chat"
        assert re.fullmatch(r"[0-9a-f]{32}", msg.id)
        assert msg.timestamp.seconds > 0
    assert len({m.id for m in replies}) == 3


async def test_a_batch_is_handled_concurrently(channel, converse, make_message) -> None:
    session = converse(channel, "alice")
    # "wait" only finishes once "release" ran: sequential handling would deadlock.
    replies = await session.ask(make_message("w", "wait", "g1"), make_message("r", "release", "g1"))
    assert replies["w"][-1].content.type == "text"
    assert replies["r"][-1].content.type == "text"


async def test_handler_exception_becomes_internal_error_and_stream_lives_on(
    channel, converse, make_message, final_of
) -> None:
    session = converse(channel, "alice")
    final = final_of((await session.ask(make_message("b1", "boom")))["b1"])
    assert (final.content.type, final.content.text) == ("error", "internal error")
    assert "secret" not in final.SerializeToString().decode("utf-8", "replace")

    after = final_of((await session.ask(make_message("ok", "text", "again")))["ok"])
    assert after.content.text == "alice:again"


async def test_handler_without_final_gets_an_error_final(
    channel, converse, make_message, final_of
) -> None:
    replies = (await converse(channel, "alice").ask(make_message("s1", "silent")))["s1"]
    assert [m.content.type for m in replies] == ["delta", "error"]
    assert final_of(replies).content.text == "internal error"


async def test_handler_error_reply_is_passed_through(
    channel, converse, make_message, final_of
) -> None:
    final = final_of((await converse(channel, "alice").ask(make_message("e1", "bad")))["e1"])
    assert (final.content.type, final.content.text) == ("error", "bad request")


async def test_repeated_id_is_not_applied_twice_and_gets_the_same_final(
    servicer, channel, converse, make_message
) -> None:
    first = converse(channel, "alice")
    original = (await first.ask(make_message("d1", "text", "once")))["d1"][-1]
    # A redelivery, as after a reconnect: another stream, same user, same id.
    second = converse(channel, "alice")
    replayed = (await second.ask(make_message("d1", "text", "once")))["d1"]

    assert servicer.calls[("alice", "d1")] == 1
    assert len(replayed) == 1
    assert replayed[0] == original


async def test_same_id_from_another_user_is_applied(
    servicer, channel, converse, make_message
) -> None:
    await converse(channel, "alice").ask(make_message("shared", "text", "a"))
    bob = (await converse(channel, "bob").ask(make_message("shared", "text", "b")))["shared"]
    assert bob[-1].content.text == "bob:b"
    assert servicer.calls[("alice", "shared")] == servicer.calls[("bob", "shared")] == 1


async def test_redelivery_while_in_progress_waits_for_the_first(
    servicer, channel, converse, make_message
) -> None:
    session = converse(channel, "alice")
    await session.send(make_message("p1", "wait", "g2"))
    await session.send(make_message("p1", "wait", "g2"), make_message("rel", "release", "g2"))
    replies: dict[str, list[Message]] = {"p1": [], "rel": []}
    finals = 0
    async with asyncio.timeout(RPC_TIMEOUT_S):
        while finals < 3:
            for msg in await session.read():
                replies[msg.context.reply_to].append(msg)
                finals += msg.content.type == "text"
    p1_finals = [m for m in replies["p1"] if m.content.type == "text"]
    assert servicer.calls[("alice", "p1")] == 1
    assert len(p1_finals) == 2
    assert p1_finals[0] == p1_finals[1]


async def test_oversized_final_becomes_an_error_final(
    adapter_runner, mesh_channel, converse, make_message, final_of
) -> None:
    limit = 4096
    server = await adapter_runner(
        ScriptedServicer(ConverseLimits(max_message_bytes=limit)), "chat", max_message_bytes=limit
    )
    session = converse(mesh_channel(server.port, "chat"), "alice")
    small = final_of((await session.ask(make_message("s", "big", data={"size": 100})))["s"])
    assert small.content.text == "x" * 100
    big = final_of((await session.ask(make_message("b", "big", data={"size": 5000})))["b"])
    assert (big.content.type, big.content.text) == ("error", "reply too large")
    assert big.context.reply_to == "b"


async def test_half_close_finishes_replies_then_ends_ok(channel, converse, make_message) -> None:
    session = converse(channel, "alice")
    await session.send(make_message("h1", "text", "x"), make_message("h2", "text", "y"))
    await session.call.done_writing()
    seen: list[Message] = []
    async with asyncio.timeout(RPC_TIMEOUT_S):
        async for response in session.call:
            seen.extend(response.messages)
        code = await session.call.code()
    assert code == grpc.StatusCode.OK
    texts = sorted(m.content.text for m in seen if m.content.type == "text")
    assert texts == ["alice:x", "alice:y"]


async def test_missing_user_metadata_is_unauthenticated(
    servicer, channel, converse, make_message
) -> None:
    session = converse(channel, None)
    # The server may refuse the call before the first write goes out: then the write fails.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await session.send(make_message("u1", "text", "x"))
        await session.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not servicer.calls


async def test_empty_user_metadata_is_unauthenticated(channel, converse, make_message) -> None:
    session = converse(channel, "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await session.send(make_message("u1", "text", "x"))
        await session.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def _health(channel: grpc.aio.Channel, service: str) -> health_pb2.HealthCheckResponse:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    return await stub.Check(request, timeout=RPC_TIMEOUT_S)


async def test_channel_without_client_certificate_is_refused(adapter_runner, mesh_channel) -> None:
    server = await adapter_runner(ScriptedServicer(), "chat")
    assert (await _health(mesh_channel(server.port, "chat"), "")).status == 1  # control
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(mesh_channel(server.port, "chat", identity=None), "")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_certificate_from_another_ca_is_refused(
    adapter_runner, mesh_channel, tmp_path: Path
) -> None:
    other = tmp_path / "other-pki"
    create_dev_certs(other)
    server = await adapter_runner(ScriptedServicer(), "chat")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(mesh_channel(server.port, "chat", pki=other), "")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_reports_serving(channel) -> None:
    for service in ("", "dialog.backend.v1.Backend"):
        response = await _health(channel, service)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(channel, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_reports_not_serving_while_stopping(adapter_runner, mesh_channel) -> None:
    server = await adapter_runner(ScriptedServicer(), "chat")
    channel = mesh_channel(server.port, "chat")
    await server.health.enter_graceful_shutdown()
    response = await _health(channel, "dialog.backend.v1.Backend")
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_the_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names: list[str] = []
    async with asyncio.timeout(RPC_TIMEOUT_S):
        async for response in stub.ServerReflectionInfo(iter([request])):
            names.extend(s.name for s in response.list_services_response.service)
    assert "dialog.backend.v1.Backend" in names
    assert "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names


async def test_start_fails_naming_the_variable_when_the_port_is_taken(
    adapter_runner, adapter_pki
) -> None:
    server = await adapter_runner(ScriptedServicer(), "chat")
    with pytest.raises(OSError, match="CHAT_PORT"):
        await adapter_runner(ScriptedServicer(), "chat", port=server.port)


async def test_start_fails_naming_the_variable_when_a_cert_is_missing(
    adapter_runner, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"^TASKS_CERT_FILE: cannot read"):
        await adapter_runner(ScriptedServicer(), "tasks", cert_file=str(tmp_path / "none.pem"))


async def test_start_binds_port_zero_and_reports_the_port(adapter_pki, mesh_channel) -> None:
    server = await start(ScriptedServicer(), adapter_config(adapter_pki, "tasks"))
    try:
        channel = mesh_channel(server.port, "tasks")
        assert server.port > 0
        assert (await _health(channel, "")).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(grace_s=0)


class _StallSeen(logging.Handler):
    """Sets an event when the servicer logs that a client stopped reading."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == STALLED_TEXT:
            self.seen.set()


async def test_client_that_stops_reading_is_cut_off(
    adapter_runner, mesh_channel, converse, make_message
) -> None:
    stall = _StallSeen()
    logging.getLogger("adapters.servicer").addHandler(stall)
    try:
        limits = ConverseLimits(write_timeout_s=0.5, outbox_size=4)
        server = await adapter_runner(ScriptedServicer(limits), "chat")
        session = converse(mesh_channel(server.port, "chat"), "alice")
        # Far more reply bytes than HTTP/2 flow control lets through unread.
        for i in range(40):
            await session.send(make_message(f"big{i}", "big", data={"size": 900_000}))
        async with asyncio.timeout(RPC_TIMEOUT_S):
            await stall.seen.wait()
        # Now drain: what flow control held arrives, then the status.
        async with asyncio.timeout(RPC_TIMEOUT_S):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in session.call:
                    pass
    finally:
        logging.getLogger("adapters.servicer").removeHandler(stall)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == STALLED_TEXT
