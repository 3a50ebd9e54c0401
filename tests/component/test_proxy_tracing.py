"""Relayed back-end calls are traced: a proxied gRPC call (``gateway.grpc.proxy``) and a
transcoded HTTP call (``gateway.http.transcoding``) each have a gateway server span, a child
of the client's trace context, whose own context is what the back-end receives.

The gateway (gRPC server and HTTP app on uvicorn) runs in this process on loopback with an
in-memory span exporter, in front of the probe back-end (``tests/support/probe.py``) behind
mutual TLS; the probe echoes the metadata it received, so the test reads the back-end's
``traceparent`` from the reply.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from gateway.auth import mint_token
from gateway.certs import create_dev_certs
from gateway.config import GatewayConfig, RoutesConfig
from tests.support.in_process import probe_backend, proxying_gateway
from tests.support.probe import SERVICE, ProbeTypes, RunningProbe, start_probe
from tests.support.traces import ClientSpan

SECRET = "proxy-tracing-component-test-secret-0000"
TIMEOUT_S = 10.0
TYPES = ProbeTypes.build()
TRACESTATE = "vendor=probe"


@dataclass
class Gateway:
    exporter: InMemorySpanExporter
    grpc_channel: grpc.aio.Channel
    http_url: str

    def token(self) -> str:
        return mint_token(SECRET, "alice", now_s=time.time(), ttl_s=600)

    async def span(self, name: str) -> ReadableSpan:
        """The one ended span called ``name``."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            found = [s for s in self.exporter.get_finished_spans() if s.name == name]
            if found:
                assert len(found) == 1, found
                return found[0]
            assert time.monotonic() < deadline, f"no span {name!r}"
            await asyncio.sleep(0.01)


@pytest.fixture
async def probe(tmp_path: Path) -> AsyncIterator[tuple[RunningProbe, Path]]:
    pki = tmp_path / "pki"
    create_dev_certs(pki)
    running = await start_probe(pki)
    yield running, pki
    await running.stop()


@pytest.fixture
async def gateway(tmp_path: Path, probe: tuple[RunningProbe, Path]) -> AsyncIterator[Gateway]:
    running, pki = probe
    backend = probe_backend("probe", running.port, pki, 7000)
    config = GatewayConfig(
        jwt_secret=SECRET,
        tls=False,
        port=0,
        grpc_port=0,
        data_dir=str(tmp_path / "data"),
        routes=RoutesConfig(backends=(backend,), rules=(), default_backend=None),
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    async with proxying_gateway(config, tmp_path, "probe", tracer) as gw:
        yield Gateway(exporter, gw.channel, gw.http_url)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def continued_by_backend(span: ReadableSpan, received: dict[str, list[bytes]]) -> None:
    """The back-end received ``span``'s context, and only it."""
    own = f"00-{format_trace_id(span.context.trace_id)}-{format_span_id(span.context.span_id)}-01"
    assert received["traceparent"] == [own.encode()]
    assert received["tracestate"] == [TRACESTATE.encode()]


def client_headers(client_span: ClientSpan) -> dict[str, str]:
    return {"traceparent": client_span.traceparent, "tracestate": TRACESTATE}


async def test_a_proxied_call_is_a_server_span_that_the_backend_continues(
    gateway: Gateway,
) -> None:
    client_span = ClientSpan.new()
    echo = gateway.grpc_channel.unary_unary(
        f"/{SERVICE}/Echo",
        request_serializer=TYPES.Request.SerializeToString,
        response_deserializer=TYPES.Reply.FromString,
    )
    metadata = (
        ("authorization", f"Bearer {gateway.token()}"),
        *client_headers(client_span).items(),
    )
    reply = await echo(TYPES.Request(text="hi"), metadata=metadata, timeout=TIMEOUT_S)
    received: dict[str, list[bytes]] = {}
    for header in reply.headers:
        received.setdefault(header.key, []).append(header.value)
    span = await gateway.span(f"{SERVICE}/Echo")
    assert span.kind is SpanKind.SERVER
    assert span.context.trace_id == client_span.trace_id
    assert parent_id(span) == client_span.span_id
    attributes = span.attributes or {}
    assert attributes["rpc.system"] == "grpc"
    assert (attributes["rpc.service"], attributes["rpc.method"]) == (SERVICE, "Echo")
    assert attributes["rpc.grpc.status_code"] == 0
    continued_by_backend(span, received)


async def test_a_proxied_call_records_the_backends_status(gateway: Gateway) -> None:
    fail = gateway.grpc_channel.unary_unary(
        f"/{SERVICE}/Fail",
        request_serializer=TYPES.Request.SerializeToString,
        response_deserializer=TYPES.Reply.FromString,
    )
    metadata = (("authorization", f"Bearer {gateway.token()}"),)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await fail(TYPES.Request(text="gone", code=5), metadata=metadata, timeout=TIMEOUT_S)
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    span = await gateway.span(f"{SERVICE}/Fail")
    assert span.parent is None  # no client context: the call starts the trace
    assert (span.attributes or {})["rpc.grpc.status_code"] == 5
    assert span.status.status_code is not StatusCode.ERROR  # the client's error, not ours


async def test_a_transcoded_call_is_an_http_server_span_that_the_backend_continues(
    gateway: Gateway,
) -> None:
    client_span = ClientSpan.new()
    headers = {"Authorization": f"Bearer {gateway.token()}", **client_headers(client_span)}
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=TIMEOUT_S) as client:
        r = await client.post(f"/{SERVICE}/Echo", json={"text": "hi"}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    received: dict[str, list[bytes]] = {}
    for header in body["headers"]:
        received.setdefault(header["key"], []).append(base64.b64decode(header["value"]))
    span = await gateway.span(f"POST /{SERVICE}/Echo")
    assert span.kind is SpanKind.SERVER
    assert span.context.trace_id == client_span.trace_id
    assert parent_id(span) == client_span.span_id
    attributes = span.attributes or {}
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == f"/{SERVICE}/Echo"
    assert attributes["http.response.status_code"] == 200
    continued_by_backend(span, received)
