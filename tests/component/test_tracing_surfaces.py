"""One trace per request, from each surface through the gateway into the back-end.

The gateway (its HTTP app on uvicorn, its ``dialog.v1.Gateway`` servicer on a gRPC server)
and the chat back-end run in this process on loopback sockets, the back-end behind mutual
TLS; each has its own tracer provider (``dialog-gateway``, ``dialog-chat``) writing to one
in-memory exporter, so that the test reads every span of the request, and checks the
parent of each and the trace id that runs through all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer, format_trace_id
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from adapters.base import AdapterConfig, RunningServer, start
from adapters.chat.server import ChatServicer
from dialog.v1 import gateway_pb2, gateway_pb2_grpc, message_pb2
from gateway.auth import mint_token
from gateway.certs import create_dev_certs
from gateway.config import BackendConfig, GatewayConfig, RoutesConfig
from gateway.delivery import QueuedWork
from gateway.grpc.servicer import GatewayServicer
from gateway.http.app import build_app
from gateway.service import DialogService
from gateway.tracing import NO_TRACER
from tests.support.in_process import monitor, serving_http
from tests.support.traces import ClientSpan

SECRET = "tracing-component-test-secret-" + "0" * 16
SPAN_WAIT_S = 10.0
BACKEND_SPAN = "dialog.backend.v1.Backend/Converse"


class Spans:
    """Every span either process ended, in one exporter."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()

    def tracer(self, service_name: str) -> Tracer:
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        return provider.get_tracer("test")

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    async def one(self, name: str, kind: SpanKind | None = None, /, **where: Any) -> ReadableSpan:
        """The one span called ``name`` (of ``kind``) whose attributes include ``where``,
        once ended."""
        deadline = time.monotonic() + SPAN_WAIT_S
        while True:
            found = [
                s
                for s in self.named(name)
                if all((s.attributes or {}).get(k) == v for k, v in where.items())
                and kind in (None, s.kind)
            ]
            if found:
                assert len(found) == 1, found
                return found[0]
            assert time.monotonic() < deadline, f"no span {name!r} with {where}"
            await asyncio.sleep(0.01)


@dataclass
class Gateway:
    service: DialogService
    http_url: str
    ws_url: str
    grpc_target: str

    def token(self, sub: str = "alice") -> str:
        return mint_token(SECRET, sub, now_s=time.time(), ttl_s=600)


def _config(backend_port: int) -> GatewayConfig:
    backend = BackendConfig(name="chat", target=f"127.0.0.1:{backend_port}", server_name="chat")
    routes = RoutesConfig(backends=(backend,), rules=(), default_backend="chat")
    return GatewayConfig(tls=False, port=0, jwt_secret=SECRET, routes=routes)


@contextlib.asynccontextmanager
async def running_gateway(base: Path, backend_port: int, tracer: Tracer) -> AsyncIterator[Gateway]:
    """The gateway's HTTP app and gRPC servicer on loopback, forwarding to the back-end."""
    config = _config(backend_port)  # back-end certificates: certs/ under base
    service = DialogService(config, base_dir=base, tracer=tracer)
    await service.start()
    grpc_server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(service), grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        async with serving_http(config, build_app(service, monitor())) as http_url:
            yield Gateway(
                service,
                http_url,
                http_url.replace("http://", "ws://") + "/ws",
                f"127.0.0.1:{grpc_port}",
            )
    finally:
        await grpc_server.stop(None)
        await service.close()


@pytest.fixture
def spans() -> Spans:
    return Spans()


@pytest.fixture
async def backend(tmp_path: Path, spans: Spans) -> AsyncIterator[RunningServer]:
    """The chat back-end (echo), traced as ``dialog-chat``, behind mutual TLS."""
    certs = tmp_path / "certs"
    create_dev_certs(certs)
    servicer = ChatServicer()
    servicer.tracer = spans.tracer("dialog-chat")
    config = AdapterConfig(
        name="chat",
        host="127.0.0.1",
        port=0,
        cert_file=str(certs / "chat.pem"),
        key_file=str(certs / "chat-key.pem"),
        ca_file=str(certs / "ca.pem"),
    )
    running = await start(servicer, config)
    yield running
    await running.stop(grace_s=0)


@pytest.fixture
async def gateway(tmp_path: Path, backend: RunningServer, spans: Spans) -> AsyncIterator[Gateway]:
    async with running_gateway(tmp_path, backend.port, spans.tracer("dialog-gateway")) as gw:
        yield gw


def text_message(msg_id: str, text: str = "hello there", **labels: str) -> dict[str, Any]:
    body: dict[str, Any] = {"id": msg_id, "content": {"type": "text", "text": text}}
    if labels:
        body["context"] = {"labels": labels}
    return body


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def service_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


async def forwarded(spans: Spans, msg_id: str, parent: ReadableSpan) -> None:
    """The back-end call of ``msg_id`` is a child of ``parent``, and the back-end's span of
    the message a child of that call: all in ``parent``'s trace."""
    call = await spans.one(BACKEND_SPAN, SpanKind.CLIENT, **{"dialog.message.id": msg_id})
    assert service_of(call) == "dialog-gateway"
    assert parent_id(call) == parent.context.span_id
    assert call.context.trace_id == parent.context.trace_id
    attributes = call.attributes or {}
    assert attributes["rpc.service"] == "dialog.backend.v1.Backend"
    assert attributes["rpc.method"] == "Converse"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["dialog.backend"] == "chat"
    adapter = await spans.one(BACKEND_SPAN, SpanKind.SERVER, **{"dialog.message.id": msg_id})
    assert parent_id(adapter) == call.context.span_id
    assert service_of(adapter) == "dialog-chat"
    assert adapter.context.trace_id == parent.context.trace_id
    assert (adapter.attributes or {})["dialog.message.id"] == msg_id


def auth(gateway: Gateway, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token()}", **headers}


# --- HTTP ----------------------------------------------------------------------------------


async def test_post_messages_is_one_trace_into_the_backend(gateway: Gateway, spans: Spans) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        r = await client.post("/messages", json=text_message("h1"), headers=auth(gateway))
    assert r.status_code == 200, r.text
    server = await spans.one("POST /messages")
    assert server.parent is None  # no traceparent: the request starts the trace
    assert server.kind is SpanKind.SERVER and service_of(server) == "dialog-gateway"
    attributes = server.attributes or {}
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/messages"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/messages"
    assert attributes["server.address"] == "127.0.0.1"
    await forwarded(spans, "h1", server)


async def test_a_client_traceparent_is_the_parent_and_never_reaches_the_backend(
    gateway: Gateway, spans: Spans
) -> None:
    client_span = ClientSpan.new()
    planted = ClientSpan.new().traceparent  # a label the client must not set for the back-end
    body = text_message("h2", traceparent=planted, keep="me")
    headers = auth(gateway, traceparent=client_span.traceparent, tracestate="vendor=1")
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        r = await client.post("/messages", json=body, headers=headers)
    assert r.status_code == 200, r.text
    # The gateway owns the trace labels: what is stored (and echoed) has none of them.
    assert r.json()["message"]["context"]["labels"] == {"keep": "me"}
    server = await spans.one("POST /messages")
    assert server.context.trace_id == client_span.trace_id
    assert parent_id(server) == client_span.span_id
    assert server.context.trace_state.get("vendor") == "1"
    # The back-end's span continues the gateway's call, not the label the client planted.
    await forwarded(spans, "h2", server)


async def test_sse_post_is_one_trace_and_its_span_lasts_the_stream(
    gateway: Gateway, spans: Spans
) -> None:
    client_span = ClientSpan.new()
    headers = auth(gateway, traceparent=client_span.traceparent, accept="text/event-stream")
    async with (
        httpx.AsyncClient(base_url=gateway.http_url) as client,
        client.stream("POST", "/messages", json=text_message("s1"), headers=headers) as r,
    ):
        assert r.status_code == 200
        events = [line async for line in r.aiter_lines() if line.startswith("event:")]
    assert events[0] == "event: ack" and events[-1] == "event: message"
    server = await spans.one("POST /messages")
    assert parent_id(server) == client_span.span_id
    assert server.context.trace_id == client_span.trace_id
    call = await spans.one(BACKEND_SPAN, SpanKind.CLIENT, **{"dialog.message.id": "s1"})
    assert server.end_time is not None and call.end_time is not None
    assert server.end_time >= call.end_time  # ended with the stream, not with the headers
    await forwarded(spans, "s1", server)


# --- WebSocket -----------------------------------------------------------------------------


async def until_final(ws: ClientConnection, msg_id: str) -> None:
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await ws.recv())
            content_type = frame["content"]["type"]
            if frame["context"].get("reply_to") != msg_id or content_type in ("ack", "delta"):
                continue
            assert content_type == "text", frame
            return


async def test_websocket_messages_are_traced_from_the_upgrade_or_their_labels(
    gateway: Gateway, spans: Spans
) -> None:
    upgrade = ClientSpan.new()
    frame_span = ClientSpan.new()
    headers = auth(gateway, traceparent=upgrade.traceparent)
    async with connect(
        gateway.ws_url,
        subprotocols=[Subprotocol("dialog.v1.json")],
        additional_headers=headers,
    ) as ws:
        await ws.send(json.dumps(text_message("w1")))
        await until_final(ws, "w1")
        await ws.send(json.dumps(text_message("w2", traceparent=frame_span.traceparent)))
        await until_final(ws, "w2")
    connection = await spans.one("GET /ws")
    assert parent_id(connection) == upgrade.span_id
    assert connection.context.trace_id == upgrade.trace_id
    assert (connection.attributes or {})["http.response.status_code"] == 101
    # A frame without a traceparent label: a child of the connection.
    plain = await spans.one("process /ws", **{"messaging.message.id": "w1"})
    assert plain.kind is SpanKind.CONSUMER
    assert parent_id(plain) == connection.context.span_id
    assert (plain.attributes or {})["messaging.system"] == "websocket"
    await forwarded(spans, "w1", plain)
    # A frame with one: a child of the client's span, linked to the connection.
    labelled = await spans.one("process /ws", **{"messaging.message.id": "w2"})
    assert parent_id(labelled) == frame_span.span_id
    assert labelled.context.trace_id == frame_span.trace_id
    assert [link.context.span_id for link in labelled.links] == [connection.context.span_id]
    await forwarded(spans, "w2", labelled)


# --- gRPC ----------------------------------------------------------------------------------


def grpc_message(msg_id: str, **labels: str) -> message_pb2.Message:
    msg = message_pb2.Message(id=msg_id, role=message_pb2.ROLE_USER)
    msg.content.type = "text"
    msg.content.text = "hello there"
    msg.context.labels.update(labels)
    return msg


def grpc_metadata(gateway: Gateway, client_span: ClientSpan) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {gateway.token()}"),
        ("traceparent", client_span.traceparent),
    )


async def test_grpc_send_is_one_trace_from_the_metadata(gateway: Gateway, spans: Spans) -> None:
    client_span = ClientSpan.new()
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        call = stub.Send(
            gateway_pb2.SendRequest(message=grpc_message("g1")),
            metadata=grpc_metadata(gateway, client_span),
        )
        kinds = [response.message.content.type async for response in call]
    assert kinds[0] == "ack" and kinds[-1] == "text"
    server = await spans.one("dialog.v1.Gateway/Send")
    assert server.kind is SpanKind.SERVER
    assert parent_id(server) == client_span.span_id
    assert server.context.trace_id == client_span.trace_id
    attributes = server.attributes or {}
    assert (attributes["rpc.system"], attributes["rpc.service"], attributes["rpc.method"]) == (
        "grpc",
        "dialog.v1.Gateway",
        "Send",
    )
    assert attributes["rpc.grpc.status_code"] == 0
    await forwarded(spans, "g1", server)


async def test_grpc_converse_traces_each_message_under_the_call(
    gateway: Gateway, spans: Spans
) -> None:
    client_span = ClientSpan.new()
    labelled = ClientSpan.new()
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        call = stub.Converse(metadata=grpc_metadata(gateway, client_span))
        for msg in (grpc_message("c1"), grpc_message("c2", traceparent=labelled.traceparent)):
            await call.write(gateway_pb2.ConverseRequest(message=msg))
        finals: set[str] = set()
        async with asyncio.timeout(10):
            while finals != {"c1", "c2"}:
                response = await call.read()
                assert response is not grpc.aio.EOF  # type: ignore[attr-defined]
                if response.message.content.type == "text":
                    finals.add(response.message.context.reply_to)
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    server = await spans.one("dialog.v1.Gateway/Converse")
    assert parent_id(server) == client_span.span_id
    assert (server.attributes or {})["rpc.grpc.status_code"] == 0
    first = await spans.one("process dialog.v1.Gateway/Converse", **{"messaging.message.id": "c1"})
    assert parent_id(first) == server.context.span_id
    assert first.context.trace_id == client_span.trace_id
    await forwarded(spans, "c1", first)
    second = await spans.one("process dialog.v1.Gateway/Converse", **{"messaging.message.id": "c2"})
    assert parent_id(second) == labelled.span_id
    await forwarded(spans, "c2", second)


# --- the durable queue ----------------------------------------------------------------------


async def test_a_queued_message_is_delivered_in_the_trace_it_was_admitted_in(
    gateway: Gateway, spans: Spans
) -> None:
    """The queue keeps the trace context of the message's span: the delivery's back-end call
    is its child, however late it comes."""
    admitted = ClientSpan.new()
    work = QueuedWork(
        user="alice",
        client="",
        key="",
        entity="",
        log_seq=1,
        message=grpc_message("q1"),
        traceparent=admitted.traceparent,
    )
    await gateway.service.messages.deliver_queued("chat", QueuedWork.decode(work.encode()))
    call = await spans.one(BACKEND_SPAN, SpanKind.CLIENT, **{"dialog.message.id": "q1"})
    assert call.context.trace_id == admitted.trace_id
    assert parent_id(call) == admitted.span_id
    adapter = await spans.one(BACKEND_SPAN, SpanKind.SERVER, **{"dialog.message.id": "q1"})
    assert parent_id(adapter) == call.context.span_id


# --- exemplars and the tracing-off path ----------------------------------------------------


async def test_latency_histograms_carry_trace_id_exemplars_in_openmetrics(
    gateway: Gateway, spans: Spans
) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        r = await client.post("/messages", json=text_message("x1"), headers=auth(gateway))
        assert r.status_code == 200
        server = await spans.one("POST /messages")
        trace_id = format_trace_id(server.context.trace_id)
        openmetrics = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
        text = await client.get("/metrics")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [line for line in openmetrics.text.splitlines() if f'trace_id="{trace_id}"' in line]
    histograms = {line.split("{")[0] for line in exemplars}
    assert "dialog_gateway_request_duration_seconds_bucket" in histograms
    assert "dialog_gateway_backend_call_duration_seconds_bucket" in histograms
    assert "dialog_gateway_time_to_first_reply_seconds_bucket" in histograms
    assert openmetrics.text.rstrip().endswith("# EOF")
    # The classic text format has no exemplars.
    assert text.headers["content-type"].startswith("text/plain")
    assert "trace_id=" not in text.text


async def test_without_a_tracer_the_gateway_passes_the_client_context_through(
    tmp_path: Path, backend: RunningServer, spans: Spans
) -> None:
    """No exporter: the gateway records nothing, yet the back-end's span still continues
    the client's trace (the no-op spans carry its context)."""
    client_span = ClientSpan.new()
    async with (
        running_gateway(tmp_path, backend.port, NO_TRACER) as gw,
        httpx.AsyncClient(base_url=gw.http_url) as client,
    ):
        headers = auth(gw, traceparent=client_span.traceparent)
        r = await client.post("/messages", json=text_message("n1"), headers=headers)
        assert r.status_code == 200
        adapter = await spans.one(BACKEND_SPAN, **{"dialog.message.id": "n1"})
    assert service_of(adapter) == "dialog-chat"
    assert adapter.context.trace_id == client_span.trace_id
    assert parent_id(adapter) == client_span.span_id
    assert all(service_of(s) == "dialog-chat" for s in spans.exporter.get_finished_spans())
